"""The main job's parts: corpus, tokenizer, batching, pretrain, fill-mask."""

import json

import numpy as np
import pytest

from keras_dynmask.app import corpus
from keras_dynmask.app import pretraining
from keras_dynmask.tf import data
from keras_dynmask.tf.tokenizer import WordPieceTokenizer
from tests.helpers import COMMAND
from tests.helpers import kill_when
from tests.helpers import run_cli
from tests.helpers import serve_in_fresh_process

TINY = {
    "vocabulary_size": 200,
    "max_length": 16,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "batch_size": 8,
    "max_selections": 4,
}


def _write_corpus(folder, documents=120, seed=0):
    rng = np.random.default_rng(seed)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our team"]
    verbs = ["reads", "writes", "likes", "finds", "opens"]
    objects = ["a book", "the letter", "some code", "the door", "a list"]
    blocks = []
    for _ in range(documents):
        sentences = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            for _ in range(int(rng.integers(1, 4)))
        ]
        blocks.append(" ".join(sentences))
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    return path


def test_default_corpus_is_large_and_stable():
    documents = corpus.default_corpus()
    assert sum(len(d.split()) for d in documents) > 200_000
    assert documents[:50] == corpus.default_corpus()[:50]
    training, held_out = corpus.split_documents(documents)
    assert 0.02 < len(held_out) / len(documents) < 0.1
    assert set(held_out).isdisjoint(training)


def test_stdlib_docstrings_are_the_corpus_with_their_modules():
    pairs = corpus.stdlib_docstrings()
    documents = corpus.default_corpus()
    assert [text for _, text in pairs] == documents[: len(pairs)]
    assert len(documents) > len(pairs) > 5000  # then the help topics
    modules = {module for module, _ in pairs}
    assert {"email.mime.text", "json", "asyncio.tasks"} <= modules
    assert not any(m.endswith("__init__") or "/" in m for m in modules)


def test_bad_corpora_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        corpus.read_corpus(tmp_path / "missing")
    (tmp_path / "notes.md").write_text("not a text file")
    with pytest.raises(ValueError, match="no .txt files with text"):
        corpus.read_corpus(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="holds no UTF-8 text"):
        corpus.read_corpus(empty)
    with pytest.raises(ValueError, match="at least 2 documents"):
        corpus.split_documents(["one document"])


def test_small_corpora_hold_out_one_document_and_junk_files_are_skipped(
    tmp_path,
):
    documents = [
        f"paragraph {i} about lists and dictionaries" for i in range(6)
    ]
    training, held_out = corpus.split_documents(documents)
    assert len(held_out) >= 1 and len(training) >= 1
    assert sorted(training + held_out) == sorted(documents)
    assert corpus.split_documents(documents[::-1])[1] == held_out

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good.txt").write_text("A real paragraph.\n\nAnother one.")
    (folder / "random.txt").write_bytes(np.random.default_rng(0).bytes(20_000))
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "nul.txt").write_text("text\x00with a NUL byte")
    lines = []
    documents = corpus.read_corpus(folder, log=lines.append)
    assert documents == ["A real paragraph.", "Another one."]
    assert len(lines) == 3 and all(line.startswith("Skipped") for line in lines)
    assert any("random.txt (not UTF-8" in line for line in lines)
    assert any("latin1.txt (not UTF-8" in line for line in lines)
    assert any("nul.txt (binary" in line for line in lines)


def test_tokenizer_sequences_and_batches(tmp_path):
    documents = corpus.read_corpus(_write_corpus(tmp_path))
    with pytest.raises(ValueError, match="vocabulary_size=5"):
        WordPieceTokenizer.build(documents, 5)
    tokenizer = WordPieceTokenizer.build(documents, 100, cache_dir=tmp_path)
    again = WordPieceTokenizer.build(documents, 100, cache_dir=tmp_path)
    assert again.vocabulary == tokenizer.vocabulary
    ids = tokenizer.encode(["the cat [MASK] a book."])
    assert ids[0, 0] == tokenizer.cls_id
    assert tokenizer.mask_id in ids[0]
    assert tokenizer.decode(ids[0]) == "the cat [MASK] a book ."

    with pytest.raises(ValueError, match="max_length"):
        data.sequences(tokenizer, documents, 2)
    pieces = data.sequences(tokenizer, documents, 8)
    assert max(len(p) for p in pieces) <= 8
    assert all(
        p[0] == tokenizer.cls_id and p[-1] == tokenizer.sep_id for p in pieces
    )
    batches = list(data.batched(pieces, 4, seed=0))
    assert len(batches) == int(data.batched(pieces, 4).cardinality())
    assert sum(b.shape[0] for b in batches) == len(pieces)
    for batch in batches:
        batch = batch.numpy()
        # Each batch is padded only to its own longest sequence.
        assert (batch != 0).sum(axis=1).max() == batch.shape[1]


def _weights(folder):
    import keras

    model = keras.saving.load_model(folder / "model.keras")
    return [np.asarray(w) for w in model.weights]


def _cli_settings(settings):
    return [
        f"--{name.replace('_', '-')}={value}"
        for name, value in settings.items()
    ]


def _checkpoint_steps(output):
    return [
        int(path.name.split("-")[1])
        for path in (output / "backup").glob("step-*")
    ]


def test_pretrain_writes_the_model_resumes_and_fills_masks(tmp_path):
    path = _write_corpus(tmp_path)
    output = tmp_path / "model"
    # 19 steps an epoch: killed mid-epoch, once a checkpoint within an
    # epoch is written (the kill lands a few steps later, anywhere).
    stderr = kill_when(
        [COMMAND, "pretrain", f"--corpus={path}", f"--output={output}"]
        + ["--epochs=2", "--save-every=4", *_cli_settings(TINY)],
        lambda: any(step % 19 for step in _checkpoint_steps(output)),
    )
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not (output / "model.keras").exists()
    with pytest.raises(ValueError, match=r"other settings \(batch_size 8 "):
        pretraining.pretrain(
            corpus_path=str(path),
            output=output,
            epochs=2,
            **{**TINY, "batch_size": 4},
        )
    lines = []
    results = pretraining.pretrain(
        corpus_path=str(path), output=output, epochs=2, log=lines.append, **TINY
    )
    resumed_at = [line for line in lines if line.startswith("Resuming at")]
    assert resumed_at and " of 38 (epoch " in resumed_at[0], lines
    assert results["epochs_run"] >= 1
    assert not (output / "backup").exists()
    for name in ("model.keras", "vocabulary.txt", "settings.json", "1"):
        assert (output / name).exists(), name
    assert (output / "text" / "1" / "saved_model.pb").exists()
    assert any(line.startswith("Held-out masked-LM accuracy") for line in lines)
    saved = [line for line in lines if "largest difference from Keras" in line]
    gaps = [float(x.split()[-1]) for x in saved[0].split(":")[-1].split(",")]
    assert max(gaps) < 1e-4, saved

    # Interrupted equals uninterrupted (dropout included), bit for bit.
    whole = tmp_path / "whole"
    pretraining.pretrain(
        corpus_path=path,
        output=whole,
        epochs=2,
        save_every=1000,
        log=lambda line: None,
        **TINY,
    )
    for resumed, straight in zip(
        _weights(output), _weights(whole), strict=True
    ):
        np.testing.assert_array_equal(resumed, straight)

    # What `pretrain` wrote, in processes without this package: the ids
    # model with TensorFlow alone, the text model with tensorflow_text.
    model, tokenizer = pretraining.load(output)
    text = "the cat [MASK] a book."
    ids = tokenizer.encode([text])
    want = model.predict(ids, verbose=0)
    got = serve_in_fresh_process(
        output / "1",
        "serving_default",
        f"token_ids=tf.constant({ids.tolist()})",
    )
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    got = serve_in_fresh_process(
        output / "text" / "1",
        "serving_default",
        f"text=tf.constant([{text!r}])",
        imports=", tensorflow_text",
    )
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    np.testing.assert_array_equal(got["mask_positions"], want["mask_positions"])

    run = run_cli(
        "fill-mask",
        "the cat [MASK] a book.",
        "--model",
        str(output),
        "--top-k",
        "3",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Fill-mask: the cat [MASK] a book.")
    assert "[MASK] at 3:" in run.stdout
    # predict on the model folder loads its latest version, as TF Serving
    # does, and shows what fill-mask shows, for every kind of artifact.
    for artifact, given in [
        (output, ["--text", text]),
        (output / "1", ["--ids", ",".join(map(str, ids[0]))]),
        (output / "text", ["--text", text]),
        (output / "masked_lm.tflite", ["--text", text]),
        (output / "model.keras", ["--text", text]),
    ]:
        run = run_cli("predict", str(artifact), *given, "--top-k", "3")
        assert run.returncode == 0, (artifact, run.stderr[-2000:])
        assert run.stdout.splitlines()[1].startswith("  [MASK] at 3: ")
        assert run.stdout.count("(") == 3, run.stdout
        assert "XNNPACK" not in run.stderr and "Traceback" not in run.stderr
    run = run_cli("predict", str(output), "--text", text, "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    raw = json.loads(run.stdout)
    np.testing.assert_allclose(
        raw["outputs"]["logits"], want["logits"], atol=1e-4
    )
    missing = run_cli(
        "fill-mask", "a [MASK]", "--model", str(tmp_path / "nothing")
    )
    assert missing.returncode == 2
    assert "No trained model" in missing.stderr


def test_pretrain_rejects_bad_settings(tmp_path):
    path = _write_corpus(tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        pretraining.pretrain(
            corpus_path=path, output=tmp_path / "m", **{**TINY, "max_length": 2}
        )
    with pytest.raises(ValueError, match="vocabulary_size=4"):
        pretraining.pretrain(
            corpus_path=path,
            output=tmp_path / "m",
            **{**TINY, "vocabulary_size": 4},
        )


class _Stop(Exception):
    """An interruption at a chosen step (in this process, not a kill)."""


def _stop_at(step):
    """A callback that interrupts training once `step` steps are done."""
    import keras

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            iterations = self.model.optimizer.iterations
            if int(keras.ops.convert_to_numpy(iterations)) == step:
                raise _Stop(step)

    return StopAt()


def test_masking_strategies_train_and_resume_as_they_run(tmp_path):
    """Whole-word masking with a decaying rate: words are never split,
    the rate follows the step (resumed runs set what uninterrupted ones
    set: the same weights, bit for bit), and held-out accuracy is scored on
    single-token masks at the final rate."""
    path = _write_corpus(tmp_path)
    settings = {
        **TINY,
        "vocabulary_size": 60,  # words split into pieces: "##" tokens
        "masking": "whole-word",
        "selection_rate": 0.4,
        "final_selection_rate": 0.2,
    }
    common = {"corpus_path": path, "epochs": 2, "steps_per_epoch": 6}
    common.update(log=lambda line: None, **settings)
    output = tmp_path / "resumed"
    with pytest.raises(_Stop):
        pretraining.pretrain(
            output=output, save_every=2, callbacks=[_stop_at(9)], **common
        )
    assert max(_checkpoint_steps(output)) == 8  # resumed mid-epoch
    pretraining.pretrain(output=output, save_every=2, **common)
    whole = tmp_path / "whole"
    pretraining.pretrain(output=whole, save_every=1000, **common)
    for resumed, straight in zip(
        _weights(output), _weights(whole), strict=True
    ):
        np.testing.assert_array_equal(resumed, straight)

    model, tokenizer = pretraining.load(whole)
    ids = tokenizer.encode(path.read_text().split("\n\n")[:64])
    pieces = np.array([t.startswith("##") for t in tokenizer.vocabulary])[ids]
    assert pieces.any()  # some words are more than one token
    chosen = model.masking(ids, training=True)["mask"].numpy()
    # A piece is chosen exactly when the token before it is.
    before = np.pad(chosen, ((0, 0), (1, 0)))[:, :-1]
    np.testing.assert_array_equal(chosen[pieces], before[pieces])
    assert chosen[pieces].any()
    # Set before the last of 12 steps: 0.4 + (0.2 - 0.4) * 11 / 12.
    rate = model.masking.selection_rate_variable.numpy()
    np.testing.assert_allclose(rate, 0.4 - 0.2 * 11 / 12, rtol=1e-6)
    evaluation = model.evaluation_masking.get_config()
    assert evaluation["selection_rate"] == 0.2
    assert not evaluation["span_masking"]
    written = json.loads((whole / "settings.json").read_text())
    assert written["masking"] == "whole-word"
    assert written["final_selection_rate"] == 0.2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"masking": "words"}, "masking must be one of token, whole-word"),
        ({"final_selection_rate": 0.0}, "final_selection_rate=0.0"),
        ({"static_masks": -1}, "static_masks"),
        (
            {"static_masks": 4, "final_selection_rate": 0.1},
            "final_selection_rate or static_masks, not both",
        ),
    ],
)
def test_masking_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        pretraining.check_settings(settings)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"static": False, "span_masking": False}),
        ({"masking": "span"}, {"static": False, "span_masking": True}),
        ({"masking": "whole-word"}, {"span_masking": False}),
        ({"static_masks": 4}, {"static": True, "dupe_factor": 4}),
    ],
)
def test_the_masking_settings_build_their_layer(tmp_path, settings, expected):
    documents = corpus.read_corpus(_write_corpus(tmp_path))
    tokenizer = WordPieceTokenizer.build(documents, 100, cache_dir=tmp_path)
    settings = pretraining.check_settings({**TINY, **settings})
    model = pretraining._build(tokenizer, settings)
    config = model.masking.get_config()
    assert {key: config[key] for key in expected} == expected
    pieces = [
        i for i, t in enumerate(tokenizer.vocabulary) if t.startswith("##")
    ]
    words = settings["masking"] != "token"
    assert config["continuation_ids"] == (pieces if words else [])
    assert pieces  # the vocabulary has pieces to tell words by
    evaluation = model.evaluation_masking.get_config()
    # Every strategy is scored on single tokens, drawn once.
    assert evaluation["static"] and not evaluation["span_masking"]
    assert evaluation["selection_rate"] == settings["selection_rate"]


def test_pretrain_command_reports_bad_settings_and_leaves_nothing(tmp_path):
    path = _write_corpus(tmp_path)
    output = tmp_path / "out"
    for flags, message in [
        (["--epochs", "0"], "epochs must be an int >= 1, received epochs=0"),
        (["--num-heads", "3"], "hidden_dim must be a multiple of num_heads"),
        (["--dropout", "1.5"], "dropout=1.5"),
        (["--masking", "words"], "invalid choice: 'words'"),
    ]:
        run = run_cli(
            "pretrain", "--corpus", str(path), "--output", str(output), *flags
        )
        assert run.returncode == 2, run.stderr[-2000:]
        assert message in run.stderr and "Traceback" not in run.stderr
        assert not output.exists()
    # A corpus too small to train on fails after the folder was made: the
    # folder goes again.
    small = tmp_path / "small.txt"
    small.write_text("just one paragraph")
    run = run_cli("pretrain", "--corpus", str(small), "--output", str(output))
    assert run.returncode == 2 and "at least 2 documents" in run.stderr
    assert not output.exists()
    run = run_cli("pretrain", "--output", "/proc/keras_dynmask/out")
    assert run.returncode == 2
    assert "Cannot write to the output folder" in run.stderr


def test_ctrl_c_stops_pretraining_with_one_line_and_it_resumes(tmp_path):
    import signal
    import subprocess
    import time

    path = _write_corpus(tmp_path, documents=400)
    output = tmp_path / "out"
    flags = ["--corpus", str(path), "--output", str(output), "--epochs", "50"]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    process = subprocess.Popen(
        [COMMAND, "pretrain", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not _checkpoint_steps(output) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-12000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted; rerun the same command to resume" in out
    assert _checkpoint_steps(output)
    # The same command with fewer epochs would be other settings.
    run = run_cli("pretrain", *flags[:-2], "--epochs", "2")
    assert run.returncode == 2 and "epochs 50 then, 2 now" in run.stderr


def test_pretrain_command_on_a_small_folder_with_junk_files(tmp_path):
    """Six paragraphs train (one is held out); a binary `.txt` is skipped
    and named, not read as replacement characters."""
    folder = tmp_path / "texts"
    folder.mkdir()
    paragraphs = [
        f"The {word} function returns a new list of items from the input."
        for word in ("first", "second", "third", "fourth", "fifth", "sixth")
    ]
    (folder / "notes.txt").write_text("\n\n".join(paragraphs))
    (folder / "random.txt").write_bytes(np.random.default_rng(1).bytes(4096))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    output = tmp_path / "out"
    run = run_cli(
        "pretrain",
        "--corpus",
        str(folder),
        "--output",
        str(output),
        "--epochs",
        "1",
        *flags,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"Skipped {folder / 'random.txt'} (not UTF-8" in run.stdout
    assert "6 documents" in run.stdout and "held out" in run.stdout
    assert (output / "model.keras").exists()
