"""Block-sparse attention equals dense attention for any mask."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import keras_dynmask as kd
from keras_dynmask.attention import block_sparse
from keras_dynmask.attention import tile_mask
from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core.scores import Scoring
from keras_dynmask.layers.attention_mask import call_attention_mask
from tests.helpers import random_tables
from tests.helpers import score_modifiers

pytestmark = pytest.mark.tensorflow_only  # tiles kept: a run-time length

WORDS = [
    "causal",
    "backward",
    "bidirectional",
    "segment",
    "prefix",
    "prefix(5)",
    "span",
    "span(4, 9)",
    "window(3)",
    "window(2, 7)",
    "~window(0)",
    "~segment",
]


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
    if seed % 2:  # ids in no order: the bounds are then loose, not wrong
        segments = rng.permuted(segments, axis=1)
    return (
        q,
        k,
        v,
        {
            "segment_ids": segments,
            "prefix_length": rng.integers(0, length + 1, batch).astype("int32"),
            "span_length": rng.integers(-2, length + 2, batch).astype("int32"),
            "span_position": rng.integers(-2, length + 2, batch).astype(
                "int32"
            ),
        },
    )


def _dense(pattern, q, k, padding, per_example):
    mask = call_attention_mask(pattern, q, k, padding, padding, **per_example)
    if mask is None:
        mask = np.ones((q.shape[0], q.shape[1], k.shape[1]), bool)
    return np.broadcast_to(mask, (q.shape[0], q.shape[1], k.shape[1]))


def _planned(pattern, block_size, length, padding, per_example):
    """`(some, every, inside)` from the pattern (no `(T, S)` mask)."""
    plan = {
        "pattern": pattern,
        "block_size": block_size,
        "length": length,
        "query_mask": padding,
        "key_mask": padding,
        **per_example,
    }
    some, every = tile_mask.grid(**plan)

    def inside(rows, columns):
        return tile_mask.inside(rows=rows, columns=columns, **plan)

    return some, every, inside


@given(st.data())
def test_equals_dense_for_random_patterns(data):
    """Compositions of every kind of word, padding, lengths that are not
    multiples of the block, and rows and examples with no visible key:
    tiles planned from the pattern and from the whole mask both give the
    dense result, and the plan never skips a visible key nor calls a tile
    full that is not."""
    text, length, lengths, block_size = _case(data.draw)
    pattern = kd.parse_pattern(text)
    batch = len(lengths)
    seed = data.draw(st.integers(0, 2**16))
    q, k, v, inputs = _inputs(batch, length, seed)
    padding = np.arange(length)[None] < np.array(lengths)[:, None]
    mask = _dense(pattern, q, k, padding, inputs)
    want, want_rows, _ = softmax_attention(q, k, v, mask)
    from_mask = block_sparse.from_mask(mask, block_size)
    planned = _planned(pattern, block_size, length, padding, inputs)
    exact_some, exact_every = (np.asarray(x) for x in from_mask[:2])
    some, every = (np.broadcast_to(x, exact_some.shape) for x in planned[:2])
    assert (some >= exact_some).all()
    assert (every <= exact_every).all()
    for tiles in (from_mask, planned):
        got, got_rows = block_sparse.attention(q, k, v, block_size, *tiles)
        np.testing.assert_array_equal(got_rows, want_rows)
        np.testing.assert_allclose(got, want, atol=1e-5)


@given(st.data())
def test_equals_dense_with_score_modifiers(data):
    """The same random compositions, with one to three modifiers applied
    in order (per-key ALiBi too where the pattern is bounded by causal):
    each tile's scores are modified at its own positions, as the dense
    scores are at theirs."""
    text, length, lengths, block_size = _case(data.draw)
    pattern = kd.parse_pattern(text)
    modifiers = data.draw(
        st.lists(st.sampled_from(score_modifiers()), max_size=3)
    )
    batch = len(lengths)
    seed = data.draw(st.integers(0, 2**16))
    q, k, v, inputs = _inputs(batch, length, seed)
    rng = np.random.default_rng(seed)
    scoring = Scoring(
        modifiers,
        random_tables(modifiers, 2, rng),
        pattern.hides_future(held_unknown=True),
    )
    padding = np.arange(length)[None] < np.array(lengths)[:, None]
    mask = _dense(pattern, q, k, padding, inputs)
    positions = np.arange(length, dtype="int32")
    want, want_rows, _ = softmax_attention(
        q, k, v, mask, score=scoring.at(positions, positions)
    )
    tiles = _planned(pattern, block_size, length, padding, inputs)
    got, got_rows = block_sparse.attention(
        q, k, v, block_size, *tiles, score=scoring
    )
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("text", [w for w in WORDS if "~" not in w])
@pytest.mark.parametrize("block_size", [1, 4, 7])
def test_a_word_alone_is_planned_exactly(text, block_size):
    """Without padding, each word's empty and full tiles are exactly the
    mask's (segments sorted, as packed documents are)."""
    length = 30
    q, k, _, inputs = _inputs(2, length, 4)
    pattern = kd.parse_pattern(text)
    mask = _dense(pattern, q, k, None, inputs)
    exact = block_sparse.from_mask(mask, block_size)[:2]
    planned = _planned(pattern, block_size, length, None, inputs)[:2]
    for got, want in zip(planned, exact, strict=True):
        np.testing.assert_array_equal(
            np.broadcast_to(got, np.shape(want)), want
        )


def test_only_tiles_with_a_visible_key_are_computed():
    # 4 documents of 8 in a row of 32, blocks of 8: the 4 diagonal tiles,
    # none of them full (each holds a causal triangle).
    segments = np.repeat(np.arange(4), 8)[None].astype("int32")
    pattern = kd.parse_pattern("segment & causal")
    some, every, inside = _planned(
        pattern, 8, 32, None, {"segment_ids": segments}
    )
    rows, columns = block_sparse.tile_indices(some)
    np.testing.assert_array_equal(rows, [0, 1, 2, 3])
    np.testing.assert_array_equal(columns, [0, 1, 2, 3])
    assert not np.asarray(every).any()
    np.testing.assert_array_equal(
        inside(rows, columns)[0], np.tril(np.ones((8, 8), bool))
    )
    # Documents of 16 in blocks of 8: the tile below each diagonal is full.
    segments = np.repeat(np.arange(2), 16)[None].astype("int32")
    some, every, _ = _planned(pattern, 8, 32, None, {"segment_ids": segments})
    np.testing.assert_array_equal(block_sparse.tile_indices(every)[0], [1, 3])


@pytest.mark.parametrize("planned", [True, False])
def test_gradients_match_dense(planned):
    import tensorflow as tf

    q, k, v, per_example = _inputs(2, 29, 0)
    pattern = kd.parse_pattern("segment & causal | prefix(6)")
    padding = np.arange(29)[None] < np.array([[29], [17]])
    mask = _dense(pattern, q, k, padding, per_example)
    if planned:
        tiles = _planned(pattern, 4, 29, padding, per_example)
        assert np.asarray(tiles[1]).any()  # some tiles go without a mask
    else:
        tiles = block_sparse.from_mask(mask, 4)
    q, k, v = (tf.constant(x) for x in (q, k, v))
    grads = []
    for run in (
        lambda: block_sparse.attention(q, k, v, 4, *tiles)[0],
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
    pattern = kd.parse_pattern("segment & ~window(0) | prefix")
    padding = np.arange(37)[None] < np.array([[37], [0]])  # one sees nothing
    mask = _dense(pattern, q, k, padding, per_example)
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    want, _, _ = softmax_attention(q, k, v, mask)
    want = ops.convert_to_numpy(ops.cast(want, "float32"))
    for tiles in (
        block_sparse.from_mask(mask, 8),
        _planned(pattern, 8, 37, padding, per_example),
    ):
        got, rows = block_sparse.attention(q, k, v, 8, *tiles)
        got = ops.convert_to_numpy(ops.cast(got, "float32"))
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
    segments = (np.arange(length)[None] // 16 + np.zeros((2, 1))).astype(
        "int32"
    )
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
    # Documents of 16 in blocks of 4: 10 tiles of 16 per document kept
    # (the second row half as long): 13 tiles of 32 at length 16, over two
    # fifths; 60 of 512 at length 64. Length 3 is under two blocks.
    assert bool(tile_calls) == (length >= 24)
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    for got, want in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.asarray(results[0][0])[1, length // 2 :].any()


@pytest.mark.parametrize(
    "pattern", ["bidirectional", "causal | prefix", "span & ~causal"]
)
def test_heavy_padding_takes_tiles_for_any_pattern(pattern, tile_calls):
    """A batch mostly padding keeps few tiles whatever the pattern: the
    layer takes them (planned from the pattern) and equals dense, values
    and gradients."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    layers = [
        kd.MultiHeadAttention(2, 4, pattern=pattern, block_size=b)
        for b in (4, None)
    ]
    for layer in layers:
        layer.build((1, 5, 8), (1, 5, 8))
    layers[1].set_weights(layers[0].get_weights())
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 64, 8)), "float32")
    padding = np.arange(64)[None] < np.array([[48], [9], [3], [0]])
    per_example = {
        "prefix_length": np.array([20, 4, 1, 0], "int32"),
        "span_length": np.array([30, 5, 2, 1], "int32"),
        "span_position": np.array([3, 2, 0, 0], "int32"),
    }
    wanted = kd.parse_pattern(pattern).required_inputs()
    per_example = {k: v for k, v in per_example.items() if k in wanted}
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(
                x, x, query_mask=padding, value_mask=padding, **per_example
            )
            loss = tf.reduce_sum(y**2)
        results.append((y, tape.gradient(loss, [x, *layer.trainable_weights])))
    assert tile_calls == [64]
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    for got, want in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.asarray(results[0][0])[1, 9:].any()


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (np.zeros((2, 40), "float32"), "segment_ids must have an integer"),
        (np.zeros((40,), "int32"), "segment_ids must have rank 2"),
    ],
)
def test_bad_inputs_on_the_tile_path_get_a_clear_error(segments, message):
    # 40 positions in blocks of 4: the tile plan reads the segment ids.
    layer = kd.MultiHeadAttention(
        2, 4, pattern="segment & causal", block_size=4
    )
    x = np.zeros((2, 40, 8), "float32")
    with pytest.raises(ValueError, match=message):
        layer(x, x, segment_ids=segments)
