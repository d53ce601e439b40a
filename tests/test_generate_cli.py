"""`keras-dynmask generate` on a .keras file, a SavedModel and a TFLite
file, run as a user runs it."""

import json

import keras
import pytest

from keras_dynmask import models
from keras_dynmask.app import cli
from keras_dynmask.models import generation
from keras_dynmask.tf.tokenizer import SPECIAL_TOKENS
from keras_dynmask.tf.tokenizer import WordPieceTokenizer
from tests.helpers import run_cli

pytestmark = pytest.mark.tensorflow_only

WORDS = "the list of values is returned by this function and a new file"
PROMPTS = ["the list of", "a new file is"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A causal LM with its vocabulary, exported by the command."""
    folder = tmp_path_factory.mktemp("generate")
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, *WORDS.split(), "##s"])
    tokenizer.save(folder / "vocabulary.txt")
    keras.utils.set_random_seed(2)
    model = models.build_causal_lm(
        tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
    )
    model.save(folder / "lm.keras")
    run = run_cli(
        "export",
        str(folder / "lm.keras"),
        "--saved-model",
        str(folder / "serving"),
        "--tflite",
        str(folder / "lm.tflite"),
        "--max-length",
        "24",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return folder, model, tokenizer


def _generate(*args):
    run = run_cli("generate", *args, "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def test_every_artifact_continues_the_prompts_as_keras(artifacts):
    folder, model, tokenizer = artifacts
    prompts = [
        [tokenizer.cls_id, *row]
        for row in tokenizer.tokenize(PROMPTS).to_list()
    ]
    greedy = generation.generate(model, prompts, 6, end_id=tokenizer.sep_id)
    sampled = generation.generate(
        model, prompts, 6, top_k=4, seed=3, end_id=tokenizer.sep_id
    )
    for artifact in ("lm.keras", "serving", "lm.tflite"):
        got = _generate(
            str(folder / artifact), *PROMPTS, "--max-new-tokens", "6"
        )
        assert got["prompts"] == prompts
        assert got["new_token_ids"] == greedy, artifact
    for artifact in ("lm.keras", "serving"):
        got = _generate(
            str(folder / artifact),
            *PROMPTS,
            "--max-new-tokens",
            "6",
            "--top-k",
            "4",
            "--seed",
            "3",
        )
        assert got["new_token_ids"] == sampled, artifact
    # Text out: each prompt, then its continuation, decoded.
    run = run_cli(
        "generate", str(folder / "lm.keras"), *PROMPTS, "--max-new-tokens", "6"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        f"{text} | {tokenizer.decode(new)}"
        for text, new in zip(PROMPTS, greedy, strict=True)
    ]


def test_a_prompt_past_the_tflite_maximum_is_refused(artifacts):
    folder, _, _ = artifacts
    run = run_cli(
        "generate",
        str(folder / "lm.tflite"),
        "--ids",
        "2,5,6",
        "--max-new-tokens",
        "30",
    )
    assert run.returncode == 2
    assert "max_length=24" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_encoder_cannot_generate(tmp_path):
    encoder = models.build_encoder(
        50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
    )
    encoder.save(tmp_path / "encoder.keras")
    run = run_cli("generate", str(tmp_path / "encoder.keras"), "--ids", "2,5")
    assert run.returncode == 2
    assert "needs a CausalLM" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_encoder_decoder_decodes_its_sources_from_every_artifact(
    tmp_path, capsys
):
    keras.utils.set_random_seed(4)
    model = models.build_seq2seq(
        30, 40, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
    )
    model.save(tmp_path / "translator.keras")
    run = run_cli(
        "export",
        str(tmp_path / "translator.keras"),
        "--saved-model",
        str(tmp_path / "serving"),
        "--tflite",
        str(tmp_path / "translator.tflite"),
        "--max-length",
        "16",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    sources = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    want = generation.generate(model, [[1]] * 3, 5, sources=sources)
    flags = [item for s in sources for item in ("--source", _listed(s))]
    for artifact in ("translator.keras", "serving", "translator.tflite"):
        got = _generate(
            str(tmp_path / artifact),
            "--ids",
            "1",
            *flags,
            "--max-new-tokens",
            "5",
        )
        assert got["sources"] == sources
        assert got["prompts"] == [[1]] * 3
        assert got["new_token_ids"] == want, artifact
    # Mistakes and the plain output, in this process (the same command).
    refusals = (
        (["serving", "--ids", "1"], "pass each source with --source"),
        (
            ["translator.keras", "--ids", "1,2", "--ids", "1", *flags],
            "one source per prompt",
        ),
    )
    for argv, message in refusals:
        assert message in _refused(capsys, tmp_path / argv[0], *argv[1:])
    argv = ["--ids", "1", "--source", "5,6,7", "--max-new-tokens", "5"]
    path = str(tmp_path / "translator.keras")
    assert cli.main(["generate", path, *argv]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"5,6,7 -> 1 | {_listed(want[0])}"
    ]


def _refused(capsys, path, *argv):
    """What the command says when it refuses `generate PATH ARGV`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.main(["generate", str(path), *argv])
    assert exit.value.code == 2
    return capsys.readouterr().err


def _listed(ids):
    return ",".join(map(str, ids))
