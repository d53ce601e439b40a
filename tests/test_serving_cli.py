"""`keras-dynmask export` and `predict`, run as a user runs them."""

import json

import keras
import numpy as np

from keras_dynmask import models
from tests.helpers import VOCABULARY
from tests.helpers import run_cli as _cli


def test_export_then_predict_on_both_artifacts(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_causal_lm(
        VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
    )
    model.save(tmp_path / "lm.keras")
    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--saved-model",
        str(tmp_path / "serving"),
        "--tflite",
        str(tmp_path / "lm.tflite"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SavedModel (token ids): " in run.stdout
    assert "/serving/1" in run.stdout
    gaps = [
        float(line.rsplit(" ", 1)[1])
        for line in run.stdout.splitlines()
        if line.startswith("Largest difference")
    ]
    assert len(gaps) == 2 and max(gaps) < 1e-4

    want = np.asarray(model(np.array([[2, 9, 4]])))
    for artifact in (
        tmp_path / "serving" / "1",
        tmp_path / "serving",  # the latest version, as TF Serving loads
        tmp_path / "lm.tflite",
        tmp_path / "lm.keras",
    ):
        run = _cli("predict", str(artifact), "--ids", "2,9,4", "--json")
        assert run.returncode == 0, run.stderr[-2000:]
        got = json.loads(run.stdout)["outputs"]["outputs"]
        np.testing.assert_allclose(got, want, atol=1e-4)
        # Without --json: the top ids per position, most likely first.
        run = _cli("predict", str(artifact), "--ids", "2,9,4", "--top-k", "2")
        assert run.returncode == 0, run.stderr[-2000:]
        lines = run.stdout.splitlines()
        assert lines[:2] == [
            "Input: [2, 9, 4]",
            "  outputs, the top 2 per position:",
        ]
        for position, line in enumerate(lines[2:]):
            best = int(line.split(": ")[1].split(" ")[0])
            assert best == want[0, position].argmax()
        assert len(lines) == 5 and "XNNPACK" not in run.stderr

    # A version folder is not a model folder; a missing folder is named.
    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--saved-model",
        str(tmp_path / "serving" / "1"),
    )
    assert (
        run.returncode == 2 and "is a SavedModel version folder" in run.stderr
    )
    assert not (tmp_path / "serving" / "1" / "1").exists()
    run = _cli(
        "export", str(tmp_path / "lm.keras"), "--tflite", "/nope/x.tflite"
    )
    assert run.returncode == 2 and "'/nope' does not exist" in run.stderr
    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--saved-model",
        str(tmp_path / "serving"),
        "--version",
        "7",
    )
    assert run.returncode == 0 and "/serving/7" in run.stdout, run.stderr
    run = _cli("predict", str(tmp_path / "serving"), "--ids", "2", "--json")
    assert run.returncode == 0, run.stderr[-2000:]

    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--tflite",
        str(tmp_path / "x.tflite"),
        "--quantization",
        "int4",
    )
    assert run.returncode == 2 and "invalid choice: 'int4'" in run.stderr
    # The int8 converter's own settings lines stay out of the output.
    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--tflite",
        str(tmp_path / "int8.tflite"),
        "--quantization",
        "int8",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "fully_quantize" not in run.stdout + run.stderr
    assert "XNNPACK" not in run.stdout + run.stderr
    run = _cli("predict", str(tmp_path / "missing"), "--ids", "1")
    assert run.returncode == 2 and "No SavedModel, TFLite" in run.stderr
    run = _cli("predict", str(tmp_path), "--ids", "1")
    assert run.returncode == 2 and "no numbered version folder" in run.stderr
