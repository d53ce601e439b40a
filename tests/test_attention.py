"""MultiHeadAttention: numerics, masks kept alive, receptive fields."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask.attention.softmax import single_query_attention
from keras_dynmask.attention.softmax import softmax_attention
from tests.helpers import VOCABULARY
from tests.helpers import input_gradient
from tests.helpers import padded_ids
from tests.helpers import random_tables
from tests.helpers import to_numpy


def _stock_twin(layer, query):
    """A stock Keras MHA holding the same weights as `layer`."""
    stock = keras.layers.MultiHeadAttention(layer.num_heads, layer.key_dim)
    stock(query, query)
    stock.set_weights([w.numpy() for w in layer.trainable_weights])
    return stock


@pytest.mark.parametrize("text", ["causal", "window(1) & segment", "prefix"])
def test_equals_stock_keras_given_the_same_mask(text):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    segments = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]], "int32")
    prefix = np.array([2, 4], "int32")
    layer = kd.MultiHeadAttention(2, 4, pattern=text)
    ours = layer(x, x, segment_ids=segments, prefix_length=prefix)
    mask = kd.parse_pattern(text).mask(
        6, segment_ids=segments, prefix_length=prefix
    )
    mask = np.broadcast_to(to_numpy(mask), (2, 6, 6))
    stock = _stock_twin(layer, x)(x, x, attention_mask=mask)
    np.testing.assert_allclose(to_numpy(ours), to_numpy(stock), atol=1e-5)


def test_keeps_the_masks_of_its_inputs():
    ids = padded_ids([3, 5], 6)
    x = keras.layers.Embedding(VOCABULARY, 8, mask_zero=True)(ids)
    before = to_numpy(kd.get_keras_mask(x))
    y = kd.MultiHeadAttention(2, 4, pattern="causal")(x, x)
    np.testing.assert_array_equal(kd.get_keras_mask(x), before)
    np.testing.assert_array_equal(kd.get_keras_mask(y), before)


@pytest.mark.parametrize(
    "mixed_policy",
    ["float32", "mixed_float16", "mixed_bfloat16"],
    indirect=True,
)
def test_rows_with_no_visible_key_are_finite_zeros(mixed_policy):
    ids = padded_ids([0, 1, 4], 4)  # a fully padded row and a one-token row
    x = keras.layers.Embedding(VOCABULARY, 8)(ids)
    padding = ids != 0
    layer = kd.MultiHeadAttention(2, 4, pattern="causal & ~window(0)")

    def attend(x):
        return layer(x, x, query_mask=padding, value_mask=padding)

    def energy(x):
        return keras.ops.sum(keras.ops.cast(attend(x), "float32") ** 2)

    y, weights = layer(
        x,
        x,
        query_mask=padding,
        value_mask=padding,
        return_attention_scores=True,
    )
    y = to_numpy(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")))
    weights = keras.ops.convert_to_numpy(keras.ops.cast(weights, "float32"))
    assert np.isfinite(y).all()
    x32 = keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))
    assert np.isfinite(input_gradient(energy, x32)).all()
    # Row 0 is all padding; position 0 sees nobody under `~window(0)`.
    assert not y[0].any() and not y[:, 0].any()
    assert not weights[0].any()
    assert y[2, 1:].any()


@pytest.mark.parametrize(
    "mixed_policy",
    ["float32", "mixed_float16", "mixed_bfloat16"],
    indirect=True,
)
@pytest.mark.parametrize("text", ["causal", "bidirectional", "prefix"])
def test_fused_kernels_equal_the_written_out_softmax(mixed_policy, text):
    # Without scores, Keras' fused attention (or the causal kernel) runs;
    # with them, the softmax written out. Rows without keys: zeros both.
    keras.utils.set_random_seed(1)
    ids = padded_ids([0, 1, 3, 5], 5)
    x = keras.layers.Embedding(VOCABULARY, 8)(ids)
    padding = ids != 0
    prefix = np.array([0, 1, 2, 2], "int32")
    layer = kd.MultiHeadAttention(2, 4, pattern=text)
    inputs = {"prefix_length": prefix} if text == "prefix" else {}
    masks = {"query_mask": padding, "value_mask": padding}
    fused = layer(x, x, **masks, **inputs)
    written, _ = layer(x, x, **masks, **inputs, return_attention_scores=True)
    fused, written = (
        keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
        for y in (fused, written)
    )
    half = keras.config.dtype_policy().compute_dtype != "float32"
    np.testing.assert_allclose(
        fused, written, atol=2e-2 if half else 1e-5, rtol=2e-2 if half else 1e-7
    )
    assert np.isfinite(fused).all()
    assert not fused[0].any()  # all padding


@pytest.mark.parametrize(
    "mixed_policy",
    ["float32", "mixed_float16", "mixed_bfloat16"],
    indirect=True,
)
@pytest.mark.parametrize("length", [15, 16, 23, 32, 45])
def test_causal_chunks_equal_the_written_out_softmax(mixed_policy, length):
    # Blocks of 2: from 16 positions the queries go in 4 chunks, from 32
    # in 8 (on TensorFlow; elsewhere the backend's causal kernel runs).
    keras.utils.set_random_seed(length)  # the layer's weights too
    rng = np.random.default_rng(length)
    x = rng.normal(size=(4, length, 8)).astype("float32")
    keys = rng.random((4, length)) < 0.8
    keys[0] = False  # no key at all
    keys[1, : length // 2] = False  # the first half sees no key
    layer = kd.MultiHeadAttention(2, 4, pattern="causal", block_size=2)
    masks = {"value_mask": keys}

    def chunked(x):
        return layer(x, x, **masks)

    def written(x):
        return layer(x, x, **masks, return_attention_scores=True)[0]

    def energy(attend):
        return lambda x: keras.ops.sum(
            keras.ops.cast(
                attend(keras.ops.cast(x, layer.compute_dtype)), "float32"
            )
            ** 2
        )

    got, want = (
        keras.ops.convert_to_numpy(keras.ops.cast(attend(x), "float32"))
        for attend in (chunked, written)
    )
    half = keras.config.dtype_policy().compute_dtype != "float32"
    # bfloat16 keeps 8 significant bits: a few units in the last place of
    # an output near 2 are 2e-2, so half precision is compared relatively.
    np.testing.assert_allclose(
        got, want, atol=2e-2 if half else 1e-5, rtol=2e-2 if half else 1e-7
    )
    assert np.isfinite(got).all()
    assert not got[0].any() and not got[1, : length // 2].any()
    np.testing.assert_allclose(
        input_gradient(energy(chunked), x),
        input_gradient(energy(written), x),
        rtol=5e-2 if half else 1e-4,
        atol=5e-1 if half else 1e-4,
    )


@pytest.mark.parametrize(
    "mixed_policy",
    ["float32", "mixed_float16", "mixed_bfloat16"],
    indirect=True,
)
def test_blocks_over_padding_only_are_finite(mixed_policy):
    ids = np.zeros((2, 3), "int32")
    ids[1, 0] = 7  # one row all padding, one row with a single token
    x = keras.layers.Embedding(VOCABULARY, 8, mask_zero=True)(ids)
    for _ in range(2):
        x = kd.TransformerBlock(2, 16, pattern="causal")(x)
    compute_dtype = keras.config.dtype_policy().compute_dtype
    assert keras.backend.standardize_dtype(x.dtype) == compute_dtype
    x32 = keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))
    assert np.isfinite(x32).all()


def test_span_parameters_from_a_variable_at_call_time():
    x = np.random.default_rng(6).normal(size=(1, 5, 8)).astype("float32")
    layer = kd.MultiHeadAttention(2, 4, pattern="span")
    length = keras.Variable(1, dtype="int32", trainable=False)
    position = keras.Variable(2, dtype="int32", trainable=False)
    for size in (1, 3):
        length.assign(size)
        _, weights = layer(
            x,
            x,
            span_length=length,
            span_position=position,
            return_attention_scores=True,
        )
        seen = to_numpy(weights)[0, 0] > 0
        np.testing.assert_array_equal(
            seen,
            np.broadcast_to(
                np.isin(np.arange(5), range(2, 2 + size)), seen.shape
            ),
        )


def _jacobian(pattern, length=6):
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(1, length, 8))
    blocks = [kd.TransformerBlock(2, 16, pattern=pattern) for _ in range(2)]

    def energy_at(position):
        def energy(x):
            for block in blocks:
                x = block(x)
            return keras.ops.sum(x[0, position] ** 2)

        return energy

    # (T_out, T_in): how much output i depends on input j.
    return np.stack(
        [
            np.abs(input_gradient(energy_at(i), x)[0]).sum(axis=-1)
            for i in range(length)
        ]
    )


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    ("text", "score", "path"),
    [
        ("causal", None, "layers._pattern_attention.causal_attention"),
        ("causal", "alibi", "layers._pattern_attention.causal_attention"),
        ("window(4, 2)", "softcap(30)", "attention.blockwise.attention"),
        ("segment", "relative(8, 32)", "attention.block_sparse.attention"),
        ("bidirectional", "alibi", "attention.softmax._divided_scores"),
    ],
)
def test_every_path_compiles_under_xla(monkeypatch, text, score, path):
    """Keras' `fit` and `predict` compile with XLA on a GPU
    (`jit_compile="auto"`), where every shape is fixed when compiling: each
    attention path (causal chunks, window blocks, tiles, ALiBi divided),
    taken, gives what it gives without XLA, and so do its gradients."""
    import importlib

    import tensorflow as tf

    module, name = path.rsplit(".", 1)
    module = importlib.import_module(f"keras_dynmask.{module}")
    taken = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        taken.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    layer = kd.MultiHeadAttention(2, 8, pattern=text, score=score, block_size=8)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 64, 16)), "float32")
    real = np.arange(64)[None] < np.array([[64], [50]])
    inputs = {"query_mask": real, "value_mask": real}
    if text == "segment":
        segments = np.arange(64)[None] // 20 + np.zeros((2, 1), "int32")
        inputs["segment_ids"] = segments
    layer(x, x, **inputs)
    for key, table in random_tables(layer.score, 2, rng).items():
        layer.score_variables[key].assign(table)

    def output_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, x, **inputs)
            loss = tf.reduce_sum(y**2)
        return y, tape.gradient(loss, x)

    expected = tf.function(output_and_gradient)(x)
    taken.clear()
    compiled = tf.function(output_and_gradient, jit_compile=True)(x)
    assert taken, f"{path} not taken under XLA"
    for ours, reference in zip(compiled, expected, strict=True):
        np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_causal_receptive_field_by_gradients():
    influence = _jacobian("causal")
    future = np.triu(np.ones_like(influence, bool), k=1)
    assert (influence[future] == 0).all()
    assert (influence[~future] > 0).all()


def test_backward_receptive_field_by_gradients():
    influence = _jacobian("backward")
    past = np.tril(np.ones_like(influence, bool), k=-1)
    assert (influence[past] == 0).all()
    assert (influence[~past] > 0).all()


def test_decoding_with_an_offset_matches_the_full_sequence():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 8)).astype("float32")
    layer = kd.MultiHeadAttention(2, 4, pattern="causal & window(3)")
    full = to_numpy(layer(x, x))
    # The last three queries against all eight keys, as with a cache.
    tail = to_numpy(layer(x[:, 5:], x, offset=5))
    np.testing.assert_allclose(tail, full[:, 5:], atol=1e-6)
    per_example = to_numpy(layer(x[:, 5:], x, offset=np.array([5, 5], "int32")))
    np.testing.assert_allclose(per_example, full[:, 5:], atol=1e-6)


def test_explicit_attention_mask_is_combined():
    x = np.random.default_rng(5).normal(size=(1, 4, 8)).astype("float32")
    layer = kd.MultiHeadAttention(2, 4, pattern="causal")
    explicit = to_numpy(kd.window_mask(0, 0, query_length=4))
    _, weights = layer(
        x, x, attention_mask=explicit, return_attention_scores=True
    )
    np.testing.assert_allclose(to_numpy(weights)[0, 0], np.eye(4), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads=0"):
        kd.MultiHeadAttention(0, 4)
    with pytest.raises(ValueError, match="dropout=1.5"):
        kd.MultiHeadAttention(2, 4, dropout=1.5)
    with pytest.raises(ValueError, match="key_dim='4'"):
        kd.MultiHeadAttention(2, "4")


def test_a_block_with_an_explicit_mask_equals_its_pattern():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(7).normal(size=(2, 5, 8)).astype("float32")
    by_pattern = kd.TransformerBlock(2, 16, pattern="causal")
    explicit = kd.TransformerBlock(2, 16)
    explicit(x)
    by_pattern(x)
    explicit.set_weights(by_pattern.get_weights())
    mask = np.broadcast_to(to_numpy(kd.causal_mask(5)), (2, 5, 5))
    np.testing.assert_allclose(
        to_numpy(explicit(x, attention_mask=mask)),
        to_numpy(by_pattern(x)),
        atol=1e-6,
    )
    assert np.abs(to_numpy(explicit(x)) - to_numpy(by_pattern(x))).max() > 1e-4


def test_a_mask_of_shape_t_by_s_applies_to_every_example():
    """Stock Keras accepts a `(T, S)` mask; so do we, with any pattern."""
    x = np.random.default_rng(8).normal(size=(2, 4, 8)).astype("float32")
    explicit = to_numpy(kd.window_mask(0, 0, query_length=4))[0]
    for pattern in ("bidirectional", "causal"):
        layer = kd.MultiHeadAttention(2, 4, pattern=pattern)
        _, weights = layer(
            x, x, attention_mask=explicit, return_attention_scores=True
        )
        np.testing.assert_allclose(
            to_numpy(weights), np.broadcast_to(np.eye(4), (2, 2, 4, 4)), 1e-6
        )
    with pytest.raises(ValueError, match=r"attention_mask.*shape \(4,\)"):
        layer(x, x, attention_mask=np.ones(4, bool))


def test_a_cache_needs_its_index_and_an_index_needs_a_cache():
    x = np.zeros((1, 1, 8), "float32")
    layer = kd.MultiHeadAttention(2, 4, pattern="causal")
    cache = np.zeros((1, 2, 3, 2, 4), "float32")
    with pytest.raises(ValueError, match="cache_index=None"):
        layer(x, x, cache=cache)
    with pytest.raises(ValueError, match="cache_index=2, cache=None"):
        layer(x, x, cache_index=2)
    block = kd.TransformerBlock(2, 16, pattern="causal")
    with pytest.raises(ValueError, match="cache_index=None"):
        block(x, cache=cache)


def test_a_block_without_cross_attention_refuses_a_context():
    x = np.zeros((1, 3, 8), "float32")
    with pytest.raises(ValueError, match="cross_attention=False"):
        kd.TransformerBlock(2, 16)(x, context=x)


def test_a_shared_word_is_one_variable_named_after_it():
    """`w & (w | prefix(1))`: one variable pair, which changes the mask."""
    w = kd.Window(1)
    layer = kd.AttentionMask(kd.Causal() & w & (w | kd.Prefix(1)))
    assert sorted(layer.pattern_variables) == [
        "prefix_1_length",
        "window_1_left",
        "window_1_right",
    ]
    x = np.zeros((1, 5, 2), "float32")
    before = to_numpy(layer(x)).sum()
    layer.pattern_variables["window_1_left"].assign(4)
    assert to_numpy(layer(x)).sum() > before


def test_variable_names_do_not_depend_on_the_order_of_words():
    one = kd.MultiHeadAttention(
        2, 4, pattern="window(3, 0) | causal & window(1)"
    )
    two = kd.MultiHeadAttention(
        2, 4, pattern="window(1) & causal | window(3, 0)"
    )
    assert list(one.pattern_variables) == list(two.pattern_variables)
    assert [int(v.numpy()) for v in one.non_trainable_weights] == [
        int(v.numpy()) for v in two.non_trainable_weights
    ]
    with pytest.raises(ValueError, match="one variable 'w_left'"):
        kd.AttentionMask("window(1, name=w) | window(2, name=w)")


def test_a_named_window_checkpoint_binds_to_the_same_word(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    x = kd.TokenEmbedding(VOCABULARY, 8)(ids)
    layer = kd.MultiHeadAttention(
        2, 4, pattern="causal & window(1, name=near) | window(2, 0, name=far)"
    )
    model = keras.Model(ids, layer(x, x))
    layer.pattern_variables["near_left"].assign(3)
    model.save_weights(tmp_path / "w.weights.h5")
    # The same words, in another order.
    reordered = kd.MultiHeadAttention(
        2, 4, pattern="window(2, 0, name=far) | window(1, name=near) & causal"
    )
    model2 = keras.Model(ids, reordered(x, x))
    model2.load_weights(tmp_path / "w.weights.h5")
    assert int(reordered.pattern_variables["near_left"].numpy()) == 3
    assert int(reordered.pattern_variables["far_left"].numpy()) == 2


@pytest.mark.parametrize(
    "mask_kind", ["none", "shared", "per_head", "empty_row"]
)
def test_single_query_attention_equals_softmax_attention(mask_kind):
    """The decoding step's attention (no key or value transposed) against
    the general one, with each kind of mask; a row without keys gives
    zeros and `has_key` False."""
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 1, 2, 4)).astype("float32")
    key = rng.normal(size=(3, 6, 2, 4)).astype("float32")
    value = rng.normal(size=(3, 6, 2, 4)).astype("float32")
    mask = {
        "none": None,
        "shared": rng.random((3, 1, 6)) < 0.6,
        "per_head": rng.random((3, 2, 1, 6)) < 0.6,
        "empty_row": np.array(
            [[[True] * 6], [[False] * 6], [[True] * 3 + [False] * 3]]
        ),
    }[mask_kind]
    got, got_has_key = single_query_attention(query, key, value, mask)
    want, want_has_key, _ = softmax_attention(
        query, key, value, mask, weights=False
    )
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
    if mask is None:
        assert got_has_key is None and want_has_key is None
    else:
        np.testing.assert_array_equal(
            to_numpy(got_has_key), to_numpy(want_has_key)
        )
    if mask_kind == "empty_row":
        assert not to_numpy(got)[1].any()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_single_query_attention_is_finite_in_half_precision(dtype):
    """Half-precision heads (as under mixed precision): the scores are
    normalized in float32, a row without keys is zeros, the rest is near
    the float32 result."""
    rng = np.random.default_rng(1)
    heads = [
        rng.normal(size=(2, n, 2, 8)).astype("float32") * 4 for n in (1, 9, 9)
    ]
    mask = np.array([[[True] * 9], [[False] * 9]])
    want, _ = single_query_attention(*heads, mask)
    half = [keras.ops.cast(x, dtype) for x in heads]
    got, has_key = single_query_attention(*half, mask)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    got = to_numpy(keras.ops.cast(got, "float32"))
    assert np.isfinite(got).all()
    assert not got[1].any()
    np.testing.assert_allclose(got[0], to_numpy(want)[0], atol=0.1)
    np.testing.assert_array_equal(to_numpy(has_key), [[True], [False]])
