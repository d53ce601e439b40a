"""Block-sparse attention equals dense attention for any mask."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import keras_dynmask as kd
from keras_dynmask.attention import block_sparse
from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.layers.attention_mask import call_attention_mask

pytestmark = pytest.mark.tensorflow_only  # tiles kept: a run-time length

WORDS = ["causal", "backward", "segment", "prefix", "window(3)", "~window(0)"]


def _case(draw):
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3))
    joiner = draw(st.sampled_from([" & ", " | "]))
    length = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(0, length), min_size=1, max_size=3))
    block_size = draw(st.sampled_from([1, 3, 4, 8, 16]))
    return joiner.join(words), length, lengths, block_size


def _inputs(batch, length, seed, value_size=3):
    rng = np.random.default_rng(seed)
    q, k = (
        rng.normal(size=(batch, length, 2, 3)).astype("float32")
        for _ in range(2)
    )
    v = rng.normal(size=(batch, length, 2, value_size)).astype("float32")
    segments = np.sort(rng.integers(0, 3, (batch, length)), 1).astype("int32")
    prefix = rng.integers(0, length + 1, batch).astype("int32")
    return q, k, v, {"segment_ids": segments, "prefix_length": prefix}


@given(st.data())
def test_equals_dense_for_random_patterns(data):
    """Compositions of every kind of word, padding, lengths that are not
    multiples of the block, and rows and examples with no visible key."""
    text, length, lengths, block_size = _case(data.draw)
    batch = len(lengths)
    q, k, v, per_example = _inputs(batch, length, length * 100 + block_size)
    padding = np.arange(length)[None] < np.array(lengths)[:, None]
    mask = call_attention_mask(
        kd.parse_pattern(text), q, k, padding, padding, **per_example
    )
    if mask is None:
        mask = np.ones((batch, length, length), bool)
    want, want_rows, _ = softmax_attention(q, k, v, mask)
    got, got_rows = block_sparse.attention(q, k, v, mask, block_size)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_only_tiles_with_a_visible_key_are_computed():
    # 4 documents of 8 in a row of 32, blocks of 8: the 4 diagonal tiles.
    segments = np.repeat(np.arange(4), 8)[None].astype("int32")
    mask = kd.parse_pattern("segment & causal").mask(32, segment_ids=segments)
    rows, columns, blocks, counts = block_sparse.tiles(mask, 8)
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])
    np.testing.assert_array_equal(columns, [0, 1, 2, 3])
    assert tuple(int(c) for c in counts) == (4, 4)
    # Each kept tile holds the causal triangle of its document.
    np.testing.assert_array_equal(blocks[0], np.tril(np.ones((8, 8), bool)))


def test_gradients_match_dense():
    import tensorflow as tf

    q, k, v, per_example = _inputs(2, 29, 0)
    mask = kd.parse_pattern("segment & causal").mask(
        29, segment_ids=per_example["segment_ids"]
    )
    q, k, v = (tf.constant(x) for x in (q, k, v))
    grads = []
    for run in (
        lambda: block_sparse.attention(q, k, v, mask, 4)[0],
        lambda: softmax_attention(q, k, v, mask)[0],
    ):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(run() ** 2)
        grads.append(tape.gradient(loss, [q, k, v]))
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_finite_and_matches_dense(dtype):
    q, k, v, per_example = _inputs(2, 37, 1)
    mask = kd.parse_pattern("segment & ~window(0)").mask(
        37, segment_ids=per_example["segment_ids"]
    )
    mask = np.array(mask)
    mask[1] = False  # an example that sees nothing
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    got, rows = block_sparse.attention(q, k, v, mask, 8)
    want, _, _ = softmax_attention(q, k, v, mask)
    got, want = (
        ops.convert_to_numpy(ops.cast(x, "float32")) for x in (got, want)
    )
    assert np.isfinite(got).all()
    assert not got[1].any() and not np.asarray(rows)[1].any()
    np.testing.assert_allclose(got, want, atol=2e-2)


@pytest.fixture
def tile_calls(monkeypatch):
    """Counts the calls that take the block-sparse path."""
    calls = []
    original = block_sparse.attention

    def counted(*args, **kwargs):
        calls.append(ops.shape(args[0])[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(block_sparse, "attention", counted)
    return calls


@pytest.mark.parametrize("length", [3, 16, 64])
def test_the_layer_skips_tiles_only_when_most_are_empty(length, tile_calls):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layers = [
        kd.MultiHeadAttention(2, 4, pattern="segment & causal", block_size=b)
        for b in (4, None)
    ]
    for layer in layers:
        layer.build((1, 5, 8), (1, 5, 8))
    layers[1].set_weights(layers[0].get_weights())
    rng = np.random.default_rng(length)
    x = tf.constant(rng.normal(size=(2, length, 8)), "float32")
    segments = (np.arange(length)[None] // 8 + np.zeros((2, 1))).astype("int32")
    padding = np.arange(length)[None] < np.array([length, length // 2])[:, None]
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(
                x,
                x,
                query_mask=padding,
                value_mask=padding,
                segment_ids=segments,
            )
            loss = tf.reduce_sum(y**2)
        results.append((y, tape.gradient(loss, [x, *layer.trainable_weights])))
    # Documents of 8 in blocks of 4: 3 tiles of 4 per document kept, a
    # quarter or less of them from 3 documents on.
    assert bool(tile_calls) == (length >= 24)
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    for got, want in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.asarray(results[0][0])[1, length // 2 :].any()
