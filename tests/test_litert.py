"""Every pattern converts to TFLite builtins and matches Keras at any length.

The export issue builds the full feature; this proves the layers are safe.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import keras_dynmask as kd
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids
from tests.test_patterns import COMPOSITIONS
from tests.test_patterns import KINDS


def _model():
    keras.utils.set_random_seed(0)
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "prefix_length": keras.Input((), dtype="int32", name="prefix_length"),
        "span_length": keras.Input((), dtype="int32", name="span_length"),
        "span_position": keras.Input((), dtype="int32", name="span_position"),
    }
    x = keras.layers.Embedding(VOCABULARY, 8)(inputs["token_ids"])
    x = kd.PaddingMask(pad_id=0)(x, token_ids=inputs["token_ids"])
    x = kd.SpanTokenMask(length=1, position=0, mode="hide")(x)
    per_example = {k: v for k, v in inputs.items() if k != "token_ids"}
    outputs = {}
    for index, text in enumerate(KINDS + COMPOSITIONS[:6]):
        attention = kd.MultiHeadAttention(2, 4, pattern=text)
        outputs[f"out_{index}"] = attention(x, x, **per_example)
    # Small blocks, so lengths from 7 up take the block-wise path.
    for index, text in enumerate(["causal & window(5)", "window(2) & segment"]):
        attention = kd.MultiHeadAttention(2, 4, pattern=text, block_size=4)
        outputs[f"blockwise_{index}"] = attention(
            x, x, segment_ids=inputs["segment_ids"]
        )
    # Blocks of 2 and about 3 documents a row: past a few tokens, at most
    # two fifths of the tiles hold a key, so the block-sparse path runs,
    # with full tiles (off the diagonal, and the prefix's) and partial ones.
    for name, text in (
        ("block_sparse", "segment & causal"),
        ("block_sparse_prefix", "segment & backward | prefix(3)"),
    ):
        attention = kd.MultiHeadAttention(2, 4, pattern=text, block_size=2)
        outputs[name] = attention(x, x, segment_ids=inputs["segment_ids"])
    # Causal queries in 4 chunks from 16 positions on, 8 from 32.
    attention = kd.MultiHeadAttention(2, 4, pattern="causal", block_size=2)
    outputs["causal_chunks"] = attention(x, x)
    # Score modifiers on each path: written out (a soft cap), in causal
    # chunks, block-wise and over tiles; lengths to 300 put ALiBi's
    # penalties far past what the model was built at.
    for name, text, score, block_size in (
        ("alibi_softcap", "causal | prefix(3)", "alibi, softcap(3)", None),
        ("relative_chunks", "causal", "relative(8, 32, causal)", 2),
        ("alibi_blockwise", "causal & window(5)", "alibi", 4),
        ("relative_tiles", "segment & causal", "relative(8, 32)", 2),
    ):
        attention = kd.MultiHeadAttention(
            2, 4, pattern=text, score=score, block_size=block_size
        )
        outputs[f"score_{name}"] = attention(
            x, x, segment_ids=inputs["segment_ids"]
        )
        for table in attention.score_variables.values():
            table.assign(np.random.default_rng(0).normal(size=table.shape))
    block = kd.TransformerBlock(2, 16, pattern="causal | prefix")
    outputs["block"] = keras.layers.GlobalAveragePooling1D()(
        block(x, prefix_length=inputs["prefix_length"])
    )
    return keras.Model(inputs, outputs)


def _inputs(batch, length, seed):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": padded_ids(
            rng.integers(1, length + 1, batch), length, seed=seed
        ),
        "segment_ids": np.sort(rng.integers(0, 3, (batch, length)), 1).astype(
            "int32"
        ),
        "prefix_length": rng.integers(0, length + 1, batch).astype("int32"),
        "span_length": rng.integers(0, length + 1, batch).astype("int32"),
        "span_position": rng.integers(0, length, batch).astype("int32"),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = _model()
    path = str(tmp_path_factory.mktemp("litert") / "patterns.tflite")
    model.export(
        path,
        format="litert",
        verbose=False,
        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
    )
    return model, path


def test_only_builtin_ops_and_dynamic_shapes(converted):
    _, path = converted
    interpreter = Interpreter(model_path=path)
    details = interpreter.get_signature_runner("serving_default")
    token_shape = details.get_input_details()["token_ids"]["shape_signature"]
    assert list(token_shape) == [-1, -1]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops), ops
    assert "CUSTOM" not in ops


@pytest.mark.parametrize(
    ("batch", "length"), [(1, 1), (1, 5), (3, 7), (2, 20), (3, 64), (1, 300)]
)
def test_litert_equals_keras(converted, batch, length):
    model, path = converted
    inputs = _inputs(batch, length, seed=length)
    want = {k: np.asarray(v) for k, v in model(inputs).items()}
    runner = Interpreter(model_path=path).get_signature_runner()
    got = runner(**inputs)
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, atol=1e-5, err_msg=name)
