"""GroupedQueryAttention: patterns, masks, the smaller cache and the
block-wise path, as for MultiHeadAttention."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_dynmask as kd
from keras_dynmask.attention import blockwise
from tests.helpers import to_numpy
from tests.oracle import oracle_mask

HEADS = {"head_dim": 4, "num_query_heads": 4, "num_key_value_heads": 2}


def _gqa(pattern="bidirectional", **arguments):
    keras.utils.set_random_seed(0)
    return kd.GroupedQueryAttention(**HEADS, pattern=pattern, **arguments)


def _reference(layer, x, mask):
    """numpy grouped-query attention with the layer's weights."""
    weights = {w.path.split("/")[-2] + "/" + w.name: w for w in layer.weights}

    def project(name, inputs):
        kernel = to_numpy(weights[f"{name}/kernel"])
        bias = to_numpy(weights[f"{name}/bias"])
        return np.einsum("btd,dnh->btnh", inputs, kernel) + bias

    query = project("query", x) / np.sqrt(HEADS["head_dim"])
    key = np.repeat(project("key", x), 2, axis=2)
    value = np.repeat(project("value", x), 2, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", query, key)
    scores = np.where(mask[:, None], scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    probabilities = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    attended = np.einsum("bnts,bsnh->btnh", probabilities, value)
    kernel = to_numpy(weights["attention_output/kernel"])
    bias = to_numpy(weights["attention_output/bias"])
    return np.einsum("btnh,nhd->btd", attended, kernel) + bias


@pytest.mark.parametrize("text", ["causal", "causal & window(2)", "window(1)"])
def test_equals_a_numpy_oracle_under_its_pattern(text):
    layer = _gqa(text)
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    got = to_numpy(layer(x, x))
    mask = oracle_mask(kd.parse_pattern(text), 6, 6, batch=2)
    np.testing.assert_allclose(got, _reference(layer, x, mask), atol=1e-5)


def test_padding_rows_are_zero_and_the_mask_is_kept():
    ids = np.array([[3, 4, 5, 0], [6, 0, 0, 0]])
    x = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
    y = _gqa("causal")(x, x)
    np.testing.assert_array_equal(to_numpy(y)[ids == 0], 0.0)
    np.testing.assert_array_equal(to_numpy(kd.get_keras_mask(x)), ids != 0)
    np.testing.assert_array_equal(to_numpy(kd.get_keras_mask(y)), ids != 0)


def test_a_cache_of_key_value_heads_gives_the_whole_sequence():
    layer = _gqa("causal")
    x = np.random.default_rng(2).normal(size=(2, 7, 8)).astype("float32")
    whole = to_numpy(layer(x, x))
    cache = np.zeros((2, 2, 7, 2, 4), "float32")  # 2 key/value heads
    out, cache = layer(x[:, :4], x[:, :4], cache=cache, cache_index=0)
    np.testing.assert_allclose(to_numpy(out), whole[:, :4], atol=1e-5)
    for position in range(4, 7):
        token = x[:, position : position + 1]
        out, cache = layer(token, token, cache=cache, cache_index=position)
        np.testing.assert_allclose(
            to_numpy(out)[:, 0], whole[:, position], atol=1e-5
        )
    with pytest.raises(ValueError, match="key/value heads=2"):
        layer(token, token, cache=np.zeros((2, 2, 7, 4, 4)), cache_index=0)


@pytest.mark.tensorflow_only
def test_block_wise_equals_dense(monkeypatch):
    calls = []
    original = blockwise.attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(blockwise, "attention", counted)
    fast = _gqa("causal & window(3)", block_size=4)
    dense = _gqa("causal & window(3)", block_size=None)
    x = np.random.default_rng(3).normal(size=(2, 37, 8)).astype("float32")
    fast.build(x.shape, x.shape)
    dense.build(x.shape, x.shape)
    dense.set_weights(fast.get_weights())
    np.testing.assert_allclose(
        to_numpy(fast(x, x)), to_numpy(dense(x, x)), atol=1e-5
    )
    assert calls


def test_arguments_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        kd.GroupedQueryAttention(4, 4, 0)
    with pytest.raises(ValueError, match="dropout=2"):
        kd.GroupedQueryAttention(4, 4, 2, dropout=2)
    layer = _gqa("causal & window(3, name=local)")
    again = kd.GroupedQueryAttention.from_config(layer.get_config())
    assert again.pattern == layer.pattern
    assert list(again.pattern_variables) == ["local_left", "local_right"]
    x = np.ones((1, 3, 8), "float32")
    assert ops.shape(layer(x, x, use_causal_mask=True)) == (1, 3, 8)
