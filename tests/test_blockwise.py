"""Block-wise window attention equals dense attention, and costs less."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import keras_dynmask as kd
from keras_dynmask.attention import blockwise
from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core.scores import Scoring
from keras_dynmask.layers.attention_mask import call_attention_mask
from tests.helpers import input_gradient
from tests.helpers import random_tables
from tests.helpers import score_modifiers
from tests.helpers import to_numpy


def _no_dropout(weights):
    return weights


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("window(3, 5)", (3, 5)),
        ("causal & window(3, 5)", (3, 0)),
        ("backward & window(3, 5)", (0, 5)),
        ("window(2) | window(4, 1)", (4, 2)),
        ("window(4) & ~window(1) & segment", (4, 4)),
        ("causal", (None, 0)),
        ("window(2) | causal", (None, 2)),
        ("~window(2)", (None, None)),
        ("prefix(3) & window(2)", (2, 2)),
    ],
)
def test_band(text, expected):
    left, right = blockwise.band(kd.parse_pattern(text))
    as_int = [
        None if b is None else int(ops.convert_to_numpy(b))
        for b in (left, right)
    ]
    assert tuple(as_int) == expected


@pytest.mark.parametrize(
    ("text", "supported"),
    [
        ("window(3)", True),
        ("causal & window(3) & segment", True),
        ("window(4) & ~window(1)", True),
        ("causal", False),  # no bound on the left
        ("segment", False),
        ("prefix(3) & window(2)", False),  # prefix is absolute
        ("span(2, 1) & window(2)", False),
    ],
)
def test_supports(text, supported):
    assert blockwise.supports(kd.parse_pattern(text)) is supported


def _case(draw):
    left = draw(st.integers(0, 12))
    right = draw(st.integers(0, 12))
    parts = [f"window({left}, {right})"]
    parts += draw(
        st.lists(
            st.sampled_from(["causal", "backward", "segment", "~window(1, 0)"]),
            max_size=2,
            unique=True,
        )
    )
    length = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(0, length), min_size=1, max_size=3))
    block_size = draw(st.sampled_from([1, 3, 4, 7, 16]))
    return " & ".join(parts), length, lengths, block_size


# TensorFlow only: under JAX each eager call compiles anew (about 3 s), so
# 500 examples take half an hour; the layer tests below run everywhere.
@pytest.mark.tensorflow_only
@given(st.data())
def test_blockwise_equals_dense_for_random_patterns(data):
    """Any window composition, lengths that are not multiples of the
    block size, padded rows and rows with no visible key, and up to three
    score modifiers."""
    text, length, lengths, block_size = _case(data.draw)
    pattern = kd.parse_pattern(text)
    rng = np.random.default_rng(length * 100 + block_size)
    batch = len(lengths)
    q, k, v = (
        rng.normal(size=(batch, length, 2, 3)).astype("float32")
        for _ in range(3)
    )
    padding = np.arange(length)[None] < np.array(lengths)[:, None]
    segments = np.sort(rng.integers(0, 3, (batch, length)), 1).astype("int32")
    # Score modifiers too: each block's scores modified at its positions.
    modifiers = data.draw(
        st.lists(st.sampled_from(score_modifiers()), max_size=3)
    )
    scoring = Scoring(
        modifiers,
        random_tables(modifiers, 2, rng),
        pattern.hides_future(held_unknown=True),
    )
    positions = np.arange(length, dtype="int32")
    want_attended, want_rows, _ = softmax_attention(
        q,
        k,
        v,
        call_attention_mask(
            pattern, q, k, padding, padding, segment_ids=segments
        ),
        _no_dropout,
        score=scoring.at(positions, positions),
    )
    got_attended, got_rows = blockwise.attention(
        q,
        k,
        v,
        pattern,
        block_size,
        query_mask=padding,
        key_mask=padding,
        segment_ids=segments,
        score=scoring,
    )
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got_attended, want_attended, atol=1e-5)


def _pair(text, block_size=8, **kwargs):
    """The same layer twice: block-wise allowed, and dense only."""
    keras.utils.set_random_seed(0)
    fast = kd.MultiHeadAttention(
        2, 4, pattern=text, block_size=block_size, **kwargs
    )
    dense = kd.MultiHeadAttention(2, 4, pattern=text, block_size=None, **kwargs)
    shape = (1, 5, 8)
    fast.build(shape, shape)
    dense.build(shape, shape)
    dense.set_weights(fast.get_weights())
    return fast, dense


@pytest.fixture
def block_calls(monkeypatch):
    """Counts the calls that take the block-wise path."""
    calls = []
    original = blockwise.attention

    def counted(*args, **kwargs):
        calls.append(ops.shape(args[0])[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(blockwise, "attention", counted)
    return calls


@pytest.mark.parametrize("length", [1, 8, 23, 31, 32, 33, 100])
def test_the_layer_chooses_blocks_only_when_they_save_work(length, block_calls):
    fast, dense = _pair("causal & window(5)")
    x = np.random.default_rng(length).normal(size=(2, length, 8))
    x = x.astype("float32")
    padding = np.arange(length)[None] < np.array([length, length // 2])[:, None]
    y_fast = to_numpy(fast(x, x, query_mask=padding, value_mask=padding))
    y_dense = to_numpy(dense(x, x, query_mask=padding, value_mask=padding))
    np.testing.assert_allclose(y_fast, y_dense, atol=1e-5)
    # window 5 with blocks of 8: 2 key blocks of 8 per query block, taken
    # once that is at most half the sequence.
    assert bool(block_calls) == (length >= 32)
    # The padded row's padding positions, and nothing else, are zero.
    assert not y_fast[1, length // 2 :].any()


def test_fully_masked_rows_are_zero_and_finite(block_calls):
    fast, dense = _pair("window(4) & ~window(4)", block_size=2)
    x = np.ones((1, 30, 8), "float32")
    y = to_numpy(fast(x, x))
    assert block_calls
    assert np.isfinite(y).all() and not y.any()


@pytest.mark.parametrize(
    "mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_mixed_precision_matches_dense(mixed_policy, block_calls):
    fast, dense = _pair("causal & window(3) & segment", block_size=4)
    x = np.random.default_rng(0).normal(size=(2, 37, 8)).astype("float32")
    segments = (np.arange(37)[None] // 10 + np.zeros((2, 1))).astype("int32")
    y_fast = ops.convert_to_numpy(
        ops.cast(fast(x, x, segment_ids=segments), "float32")
    )
    y_dense = ops.convert_to_numpy(
        ops.cast(dense(x, x, segment_ids=segments), "float32")
    )
    assert block_calls
    assert np.isfinite(y_fast).all()
    np.testing.assert_allclose(y_fast, y_dense, atol=2e-2)


def test_gradients_match_dense(block_calls):
    fast, dense = _pair("window(3, 1)", block_size=4)
    x = np.random.default_rng(1).normal(size=(2, 29, 8)).astype("float32")
    grads = [
        input_gradient(lambda x, layer=layer: ops.sum(layer(x, x) ** 2), x)
        for layer in (fast, dense)
    ]
    assert block_calls
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


def test_beyond_the_written_bounds_the_dense_path_runs(block_calls):
    """On JAX and PyTorch the key blocks gathered are the pattern's bounds
    as written; a window variable widened past them is still honoured."""
    fast, dense = _pair("causal & window(2)", block_size=4)
    x = np.random.default_rng(3).normal(size=(1, 40, 8)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(fast(x, x)), to_numpy(dense(x, x)), atol=1e-5
    )
    assert block_calls
    for layer in (fast, dense):
        layer.pattern_variables["window_2_left"].assign(17)
    np.testing.assert_allclose(
        to_numpy(fast(x, x)), to_numpy(dense(x, x)), atol=1e-5
    )


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="jax.jit: bounds traced"
)
def test_under_jax_jit_the_variables_choose_in_the_graph(block_calls):
    import jax

    fast, dense = _pair("causal & window(2)", block_size=4)
    x = np.random.default_rng(4).normal(size=(1, 40, 8)).astype("float32")

    def compiled(layer):
        run = jax.jit(lambda w, o, x: layer.stateless_call(w, o, x, x)[0])
        return lambda: to_numpy(
            run(
                [v.value for v in layer.trainable_variables],
                [v.value for v in layer.non_trainable_variables],
                x,
            )
        )

    for left in (2, 17):  # within the written bounds, then beyond them
        for layer in (fast, dense):
            layer.pattern_variables["window_2_left"].assign(left)
        np.testing.assert_allclose(
            compiled(fast)(), compiled(dense)(), atol=1e-5
        )
        np.testing.assert_allclose(
            compiled(fast)(), to_numpy(dense(x, x)), atol=1e-5
        )
    assert block_calls


@pytest.mark.tensorflow_only
def test_under_xla_the_written_bounds_gather_blocks(block_calls):
    """`jit_compile=True` (Keras' `fit` on a GPU) fixes shapes when
    compiling: the key blocks are the pattern's bounds as written, as under
    JAX, and a variable widened past them takes the dense path."""
    import tensorflow as tf

    fast, dense = _pair("causal & window(2)", block_size=4)
    x = np.random.default_rng(5).normal(size=(1, 40, 8)).astype("float32")
    compiled = tf.function(lambda x: fast(x, x), jit_compile=True)
    for left in (2, 17):  # within the written bounds, then beyond them
        for layer in (fast, dense):
            layer.pattern_variables["window_2_left"].assign(left)
        np.testing.assert_allclose(
            to_numpy(compiled(x)), to_numpy(dense(x, x)), atol=1e-5
        )
    assert block_calls


@pytest.mark.tensorflow_only
def test_window_variables_may_widen_during_training(block_calls):
    """The number of key blocks follows the variable, not the constructor."""
    fast, dense = _pair("causal & window(2)", block_size=4)
    x = np.random.default_rng(2).normal(size=(1, 120, 8)).astype("float32")
    for layer in (fast, dense):
        layer.pattern_variables["window_2_left"].assign(17)
        layer.pattern_variables["window_2_right"].assign(17)
    np.testing.assert_allclose(fast(x, x), dense(x, x), atol=1e-5)
    assert block_calls


@pytest.mark.tensorflow_only
def test_a_traced_model_of_unknown_length_picks_per_call(block_calls):
    import tensorflow as tf

    def build(block_size):
        inputs = keras.Input((None,), dtype="int32")
        x = kd.TokenEmbedding(50, 8)(inputs)
        x = kd.TransformerBlock(
            2, 16, pattern="causal & window(3)", block_size=block_size
        )(x)
        return keras.Model(inputs, x)

    model, dense = build(128), build(None)  # the same weights, no blocks
    dense.set_weights(model.get_weights())
    run = tf.function(model)
    for length in (5, 300, 600):
        ids = np.random.default_rng(length).integers(1, 50, (2, length))
        np.testing.assert_allclose(run(ids), dense(ids), atol=1e-5)
    assert block_calls  # the traced model holds the block-wise path


def test_config_keeps_the_block_size():
    layer = kd.MultiHeadAttention(2, 4, pattern="window(3)", block_size=32)
    clone = kd.MultiHeadAttention.from_config(layer.get_config())
    assert clone.block_size == 32
    assert (
        kd.MultiHeadAttention(2, 4, block_size=None).get_config()["block_size"]
        is None
    )
    with pytest.raises(ValueError, match="block_size"):
        kd.MultiHeadAttention(2, 4, block_size=0)
