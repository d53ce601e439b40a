"""Export: SavedModel for TF Serving, TFLite, parity, bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynmask import models
from keras_dynmask.tf import export
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids
from tests.helpers import serve_in_fresh_process
from tests.serving import serve_grpc
from tests.serving import serve_rest


def _models():
    keras.utils.set_random_seed(0)
    return {
        "encoder": models.build_encoder(VOCABULARY, **SIZES),
        "causal_lm": models.build_causal_lm(VOCABULARY, **SIZES),
        "classifier": models.build_classifier(
            models.build_encoder(VOCABULARY, **SIZES), 3
        ),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for name, model in _models().items():
        out[name] = (
            model,
            export.to_saved_model(model, folder / name),
            export.to_tflite(model, folder / f"{name}.tflite"),
        )
    return out


@pytest.mark.parametrize("name", ["encoder", "causal_lm", "classifier"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [1, 7, 64, 300])
def test_parity_at_any_batch_and_length(exported, name, batch, length):
    model, saved, tflite = exported[name]
    rng = np.random.default_rng(length + batch)
    ids = padded_ids(rng.integers(1, length + 1, batch), length, seed=length)
    report = export.parity(model, ids, saved_model=saved, tflite=tflite)
    assert report["saved_model"] <= 1e-4, report
    assert report["tflite"] <= 1e-4, report


def test_saved_model_serves_in_a_process_without_this_package(exported):
    model, saved, _ = exported["causal_lm"]
    ids = padded_ids([3, 5], 5)
    got = serve_in_fresh_process(
        saved, "serving_default", f"token_ids=tf.constant({ids.tolist()})"
    )
    np.testing.assert_allclose(got["outputs"], model(ids), atol=1e-5)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--dir", str(saved), "--all"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout
    assert "shape: (-1, -1)" in shown.stdout
    assert "name: serving_default_token_ids:0" in shown.stdout


def test_the_serving_contract_with_requests_and_json(tmp_path):
    from tensorflow_serving.apis import predict_pb2

    keras.utils.set_random_seed(0)
    model = models.build_encoder(VOCABULARY, pattern="causal | prefix", **SIZES)
    saved = export.to_saved_model(model, tmp_path / "prefix_lm")
    ids = padded_ids([4, 6], 6).astype("int32")
    prefix = np.array([2, 3], "int32")
    want = np.asarray(model({"token_ids": ids, "prefix_length": prefix}))

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "prefix_lm"
    request.model_spec.signature_name = "serving_default"
    request.inputs["token_ids"].CopyFrom(tf.make_tensor_proto(ids))
    request.inputs["prefix_length"].CopyFrom(tf.make_tensor_proto(prefix))
    response = serve_grpc(saved, request)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["outputs"]), want, atol=1e-5
    )

    rows = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [
                {"token_ids": ids[i].tolist(), "prefix_length": int(prefix[i])}
                for i in range(2)
            ],
        }
    )
    got = [p["outputs"] for p in serve_rest(saved, rows)["predictions"]]
    np.testing.assert_allclose(got, want, atol=1e-5)
    columns = json.dumps(
        {
            "inputs": {
                "token_ids": ids.tolist(),
                "prefix_length": prefix.tolist(),
            }
        }
    )
    got = serve_rest(saved, columns)["outputs"]["outputs"]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_versions_and_bad_input(tmp_path):
    model = models.build_encoder(VOCABULARY, **SIZES)
    first = export.to_saved_model(model, tmp_path / "m")
    second = export.to_saved_model(model, tmp_path / "m")
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(ValueError, match="Version 2 already exists"):
        export.to_saved_model(model, tmp_path / "m", version=2)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]

    floats = keras.Input((None, 4))
    float_model = keras.Model(floats, keras.layers.Dense(2)(floats))
    with pytest.raises(ValueError, match="inputs are token ids"):
        export.to_saved_model(float_model, tmp_path / "f")
    with pytest.raises(ValueError, match="quantization='int4'"):
        export.to_tflite(model, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ValueError, match="needs representative_data"):
        export.to_tflite(model, tmp_path / "m.tflite", quantization="int8")
    with pytest.raises(ValueError, match="Cannot write to '/proc/"):
        export.to_saved_model(model, "/proc/keras_dynmask/m")


class _NoisyAtInference(keras.layers.Layer):
    """Draws random numbers at inference: stateless random ops need Flex."""

    def call(self, x):
        return x + keras.random.uniform(keras.ops.shape(x), seed=1)


def test_a_model_needing_flex_gets_a_clear_error_and_no_file(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 4)(ids)
    model = keras.Model(ids, _NoisyAtInference()(x))
    path = tmp_path / "flex.tflite"
    with pytest.raises(ValueError, match="Flex") as error:
        export.to_tflite(model, path)
    assert "Stateless" in str(error.value) or "Random" in str(error.value)
    assert list(tmp_path.iterdir()) == []
