"""The examples' own logic: number words, batched decoding, language-model
batches and generation checks, speech features and batches, the masking
strategies' downstream tasks and their resumable record."""

import importlib.util
import json
import pathlib
import shutil
import sys

import keras
import numpy as np
import pytest

from keras_dynmask import models
from tests.helpers import _run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    # As `python examples/NAME.py` runs it: its folder first on the path.
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_words():
    translation = _load("translation")
    assert translation.words(0) == ["zero"]
    assert translation.words(42601) == (
        "forty two thousand six hundred one".split()
    )
    assert translation.words(100000) == "one hundred thousand".split()


def test_decoding_a_batch_equals_decoding_each_source_alone():
    translation = _load("translation")
    keras.utils.set_random_seed(0)
    vocabulary = len(translation.VOCABULARY)
    model = models.build_seq2seq(
        vocabulary,
        vocabulary,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
    )
    sources = [s for s, _ in translation.pairs(5, seed=3)]
    together = translation.translate(model, sources, 6)
    alone = [translation.translate(model, [s], 6)[0] for s in sources]
    assert together == alone
    assert len({len(s) for s in sources}) > 1  # really different lengths
    assert together == translation.translate(model, sources, 6, use_cache=False)


def test_language_model_batches_shift_by_one():
    import tensorflow as tf

    text_generation = _load("text_generation")
    ids = tf.data.Dataset.from_tensors(tf.constant([[2, 5, 6, 3, 0]]))
    inputs, targets = next(iter(text_generation.language_model_batches(ids)))
    np.testing.assert_array_equal(inputs, [[2, 5, 6, 3]])
    np.testing.assert_array_equal(targets, [[5, 6, 3, 0]])


@pytest.mark.example_run
def test_text_generation_quick_run_passes_its_checks():
    run = _run(
        [
            sys.executable,
            str(ROOT / "examples" / "text_generation.py"),
            "--quick",
        ],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    checks = [line for line in run.stdout.splitlines() if " == " in line]
    assert len(checks) == 9, run.stdout
    assert all(": True" in line for line in checks), run.stdout
    assert "failed call to cuInit" not in run.stderr


@pytest.mark.example_run
def test_translation_quick_run_passes_its_checks():
    run = _run(
        [sys.executable, str(ROOT / "examples" / "translation.py"), "--quick"],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    checks = [line for line in run.stdout.splitlines() if " == " in line]
    assert len(checks) == 3, run.stdout
    assert all(": True" in line for line in checks), run.stdout
    assert "the same translations: True" in run.stdout


def test_log_mel_features_of_a_tone():
    speech = _load("speech_commands")
    rate = speech.SAMPLE_RATE
    t = np.arange(rate) / rate
    # Half a second of faint noise, then a 1 kHz tone.
    audio = np.random.default_rng(0).normal(0, 1e-3, rate)
    audio[rate // 2 :] += np.sin(2 * np.pi * 1000 * t[rate // 2 :])
    features = speech.log_mel(audio.astype("float32"))
    # 10 ms hops: about 100 frames per second.
    assert features.shape == (1 + (rate - 551) // 220, speech.MEL_BINS)
    np.testing.assert_allclose(features.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(features.std(), 1, atol=1e-3)
    # The channel that rises most is the one whose filter holds 1 kHz.
    rise = features[-30:].mean(axis=0) - features[:30].mean(axis=0)
    fft_bin = round(1000 / (rate / 1024))
    assert rise.argmax() == np.asarray(speech.mel_weights())[fft_bin].argmax()


def test_speech_batches_are_padded_to_their_own_longest():
    speech = _load("speech_commands")
    rng = np.random.default_rng(0)
    lengths = [5, 50, 7, 48, 6, 49]
    features = [rng.normal(size=(n, speech.MEL_BINS)) for n in lengths]
    labels = np.arange(6, dtype="int32")
    seen = []
    for inputs, batch_labels in speech.batches(features, labels, 3, seed=1):
        padded, batch_lengths = inputs["features"], inputs["lengths"]
        assert padded.shape[1] == batch_lengths.max()
        for row, label in enumerate(batch_labels):
            n = lengths[label]
            assert batch_lengths[row] == n
            np.testing.assert_allclose(padded[row, :n], features[label])
            assert not padded[row, n:].any()
        assert batch_lengths.max() - batch_lengths.min() < 10  # bucketed
        seen.extend(batch_labels.tolist())
    assert sorted(seen) == labels.tolist()


def test_speech_model_ignores_padding_frames():
    speech = _load("speech_commands")
    model = speech.build_model(time_masks=2, seed=0)
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(2, 30, speech.MEL_BINS)).astype("float32")
    lengths = np.array([30, 12], "int32")
    changed = frames.copy()
    changed[1, 12:] = 50.0
    outputs = [
        model.predict({"features": f, "lengths": lengths}, verbose=0)
        for f in (frames, changed)
    ]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)
def test_speech_clips_are_real_speech_of_different_lengths():
    speech = _load("speech_commands")
    audio, labels = speech.clips("espeak-ng", ["m1", "f2"], 2, seed=0)
    assert len(audio) == 2 * len(speech.WORDS)
    assert labels.tolist() == sorted(labels.tolist())
    assert len({len(a) for a in audio}) > 10
    assert all(0.2 < len(a) / speech.SAMPLE_RATE < 2.0 for a in audio)
    assert all(np.abs(a).max() > 0.05 for a in audio)


def test_strategy_tasks_pair_sentences_and_swap_words():
    strategies = _load("masking_strategies")
    rng = np.random.default_rng(0)
    text = "First one here now. Second one is this. The third, `x` (y)."
    assert strategies.sentences_of(text) == [
        "First one here now.",
        "Second one is this.",
        "The third, `x` (y).",
    ]
    documents = [[f"d{d} s{s} a b" for s in range(5)] for d in range(30)]
    rows = strategies.sentence_pairs(documents + [["alone"]], rng)
    assert len(rows) == 30 * 4
    assert 0.35 < np.mean([label for label, _, _ in rows]) < 0.65
    for label, first, second in rows:
        document, sentence = first.split()[:2]
        if label:
            assert second.split()[:2] == [document, f"s{int(sentence[1]) + 1}"]
        else:
            assert second.split()[0] != document
    sentences = [" ".join(f"w{i}{j}" for j in range(8)) for i in range(200)]
    rows = strategies.swapped_words(sentences, rng)
    assert len(rows) == 200  # no sentence repeats a word
    assert 0.35 < np.mean([label for label, _ in rows]) < 0.65
    for (label, sentence), original in zip(rows, sentences, strict=True):
        words, before = sentence.split(), original.split()
        assert sorted(words) == sorted(before)
        moved = sum(a != b for a, b in zip(words, before, strict=True))
        assert moved == (0 if label else 2)


@pytest.mark.example_run
def test_masking_strategies_quick_run_writes_its_results_and_resumes(
    tmp_path,
):
    command = [
        sys.executable,
        str(ROOT / "examples" / "masking_strategies.py"),
        "--quick",
        "--output",
        str(tmp_path),
    ]
    run = _run(command, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "masking_strategies.md").read_text()
    for row in ("static", "dynamic", "decaying", "40%", "whole-word"):
        assert f"| {row} | " in table
    assert "| span | " in table and "| random init | n/a | " in table
    assert "| package accuracy | " in table  # the paired comparison
    assert "minus random initialization" in table
    assert (tmp_path / "masking_strategies.png").stat().st_size > 10_000
    record = tmp_path / "masking_strategies.json"
    runs = json.loads(record.read_text())["runs"]
    assert len(runs) == 7
    for result in runs.values():
        assert set(result["accuracy"]) == {
            "package",
            "next sentence",
            "word order",
        }
        assert all(0 <= a <= 1 for a in result["accuracy"].values())
    # As if killed before its last two runs: the rerun redoes only those,
    # and gets what the uninterrupted run got, bit for bit.
    saved = json.loads(record.read_text())
    del saved["runs"]["span 0"], saved["runs"]["random init 0"]
    record.write_text(json.dumps(saved))
    rerun = _run(command, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming: 5 runs" in rerun.stdout
    assert "static      seed 0" not in rerun.stdout
    assert json.loads(record.read_text())["runs"] == runs
    assert (tmp_path / "masking_strategies.md").read_text() == table
    assert not list(tmp_path.glob(".*.writing"))


@pytest.mark.example_run
def test_length_extrapolation_quick_run_writes_its_results_and_resumes(
    tmp_path,
):
    command = [
        sys.executable,
        str(ROOT / "examples" / "length_extrapolation.py"),
        "--quick",
        "--output",
        str(tmp_path),
    ]
    run = _run(command, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    table = (tmp_path / "length_extrapolation.md").read_text()
    for row in ("sinusoidal", "learned", "alibi"):
        assert f"| {row} | " in table
    assert "| T = 64 | T = 128 | T = 256 | T = 512 |" in table
    assert (tmp_path / "length_extrapolation.png").stat().st_size > 10_000
    record = tmp_path / "length_extrapolation.json"
    runs = json.loads(record.read_text())["runs"]
    assert sorted(runs) == ["alibi 0", "learned 0", "sinusoidal 0"]
    for result in runs.values():
        assert sorted(result["perplexity"], key=int) == [
            "64",
            "128",
            "256",
            "512",
        ]
        # Barely trained, every model is still far better than uniform
        # guessing over the whole vocabulary, and finite.
        assert all(1 < p < 8000 for p in result["perplexity"].values())
    # As if killed before its last run: the rerun redoes only that one,
    # and gets what the uninterrupted run got, bit for bit.
    saved = json.loads(record.read_text())
    del saved["runs"]["alibi 0"]
    record.write_text(json.dumps(saved))
    rerun = _run(command, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming: 2 runs" in rerun.stdout
    assert "sinusoidal seed 0" not in rerun.stdout
    assert json.loads(record.read_text())["runs"] == runs
    assert (tmp_path / "length_extrapolation.md").read_text() == table
    assert not list(tmp_path.glob(".*.writing"))
