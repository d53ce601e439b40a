"""A test-side stand-in for TF Serving's Predict API: what the server does
with a request, on a SavedModel loaded in this process.

It finds the signature (`serving_default` when none is named), feeds the
request's named inputs, fills the ones a request leaves out from the
signature's defaults (`SignatureDef.defaults`, which TF Serving reads),
and names the outputs: as a `PredictResponse` for gRPC, and as JSON for
REST's row (`instances`) and column (`inputs`) formats.
"""

import functools
import json
import pathlib

import numpy as np
import tensorflow as tf


@functools.cache
def _load(saved_model):
    return tf.saved_model.load(saved_model)


def _defaults(saved_model, name):
    """The signature's defaults, `{input: numpy value}`, from its proto."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(
        (pathlib.Path(saved_model) / "saved_model.pb").read_bytes()
    )
    signature = proto.meta_graphs[0].signature_def[name]
    return {k: tf.make_ndarray(v) for k, v in signature.defaults.items()}


def _call(saved_model, name, feed):
    saved_model = str(saved_model)
    name = name or "serving_default"
    function = _load(saved_model).signatures[name]
    feed = {**_defaults(saved_model, name), **feed}
    return {k: v.numpy() for k, v in function(**feed).items()}


def serve_grpc(saved_model, request):
    """A `PredictResponse` for a `PredictRequest`."""
    from tensorflow_serving.apis import predict_pb2

    feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    outputs = _call(saved_model, request.model_spec.signature_name, feed)
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response


def _listed(value):
    if value.dtype == object:  # strings come back as text
        return np.vectorize(lambda b: b.decode("utf-8"))(value).tolist()
    return value.tolist()


def serve_rest(saved_model, body):
    """The JSON answer to a REST `:predict` body (a JSON string)."""
    body = json.loads(body)
    name = body.get("signature_name")
    if "instances" in body:  # row format: one object per example
        rows = body["instances"]
        feed = {k: np.array([row[k] for row in rows]) for k in rows[0]}
        out = {k: _listed(v) for k, v in _call(saved_model, name, feed).items()}
        return {
            "predictions": [
                {k: out[k][i] for k in out} for i in range(len(rows))
            ]
        }
    feed = {k: np.array(v) for k, v in body["inputs"].items()}
    out = _call(saved_model, name, feed)
    return {"outputs": {k: _listed(v) for k, v in out.items()}}
