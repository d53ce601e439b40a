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
    assert "SavedModel: " in run.stdout and "/serving/1" in run.stdout
    gaps = [
        float(line.rsplit(" ", 1)[1])
        for line in run.stdout.splitlines()
        if line.startswith("Largest difference")
    ]
    assert len(gaps) == 2 and max(gaps) < 1e-4

    want = np.asarray(model(np.array([[2, 9, 4]])))
    for artifact in (tmp_path / "serving" / "1", tmp_path / "lm.tflite"):
        run = _cli("predict", str(artifact), "--ids", "2,9,4")
        assert run.returncode == 0, run.stderr[-2000:]
        got = json.loads(run.stdout)["outputs"]["outputs"]
        np.testing.assert_allclose(got, want, atol=1e-4)

    run = _cli(
        "export",
        str(tmp_path / "lm.keras"),
        "--tflite",
        str(tmp_path / "x.tflite"),
        "--quantization",
        "int4",
    )
    assert run.returncode == 2 and "invalid choice: 'int4'" in run.stderr
    run = _cli("predict", str(tmp_path / "missing"), "--ids", "1")
    assert run.returncode == 2 and "No SavedModel or TFLite" in run.stderr
