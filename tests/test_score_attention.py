"""Score modifiers in the attention layers: every path (dense, fused,
block-wise, block-sparse, causal chunks, a decoding step) against a numpy
oracle, cached decoding against the full pass, gradients into the relative
bias, mixed precision, configs and bad arguments."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_dynmask as kd
from keras_dynmask.attention import block_sparse
from keras_dynmask.attention import blockwise
from keras_dynmask.attention import softmax
from keras_dynmask.layers import _pattern_attention
from keras_dynmask.layers import multi_head_attention
from tests.helpers import to_numpy
from tests.oracle import modified_scores
from tests.oracle import oracle_mask

HEADS, KEY_DIM, WIDTH = 4, 3, 8
TENSORFLOW = keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="tests")
def tilt(score, batch, head, query, key):
    """A user's modifier that reads every index it is given."""
    return score + 0.3 * ops.cos(query - key + head) + 0.2 * batch


MODIFIERS = {
    "alibi": "alibi",
    "softcap": "softcap(2)",
    "alibi_softcap": "alibi, softcap(2)",
    "relative": "relative(8, 16)",
    "function": [kd.ScoreFunction(tilt)],
}

# name: (pattern, block size, length, where the call should go on
# TensorFlow when every modifier is additive)
PATHS = {
    "dense": ("causal | prefix(3)", None, 20, "dense"),
    "blockwise": ("causal & window(5)", 4, 40, "blockwise"),
    "block_sparse": ("segment & causal", 4, 40, "block_sparse"),
    "causal_chunks": ("causal", 2, 40, "causal"),
}
# The functions each path runs, watched through the modules that call them.
SPIES = {
    "dense": (multi_head_attention, "softmax_attention"),
    "blockwise": (blockwise, "attention"),
    "block_sparse": (block_sparse, "attention"),
    "causal": (_pattern_attention, "causal_attention"),
    "single_query": (_pattern_attention, "single_query_attention"),
}


def _layer(pattern, score, block_size=None, seed=0, **arguments):
    """A built layer whose modifier weights are random (not their zeros)."""
    keras.utils.set_random_seed(seed)
    layer = kd.MultiHeadAttention(
        HEADS,
        KEY_DIM,
        pattern=pattern,
        block_size=block_size,
        score=score,
        **arguments,
    )
    layer.build((1, 2, WIDTH), (1, 2, WIDTH))
    rng = np.random.default_rng(seed)
    for variable in layer.score_variables.values():
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return layer


def _inputs(length, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, length, WIDTH)).astype("float32")
    padding = np.arange(length)[None] < np.array([[length], [length - 7]])
    segments = np.repeat(np.arange(4), -(-length // 4))[None, :length]
    return x, padding, np.repeat(segments, 2, 0).astype("int32")


def _oracle(layer, query, key, mask, queries, keys):
    """numpy attention with the layer's weights: the modifiers' scores,
    the mask, softmax; a query with no visible key outputs zeros."""
    values = {n: to_numpy(v) for n, v in layer.score_variables.items()}
    q = to_numpy(layer._query_dense(query)).astype("float64")
    k = to_numpy(layer._key_dense(key)).astype("float64")
    v = to_numpy(layer._value_dense(key)).astype("float64")
    scores = np.einsum("btnh,bsnh->bnts", q / math.sqrt(KEY_DIM), k)
    scores = modified_scores(layer.score, scores, queries, keys, values)
    mask = mask[:, None]
    scores = np.where(mask, scores, -np.inf)
    top = np.where(
        mask.any(-1, keepdims=True), scores.max(-1, keepdims=True), 0
    )
    weights = np.where(mask, np.exp(scores - top), 0.0)
    weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-300)
    attended = np.einsum("bnts,bsnh->btnh", weights, v)
    out = to_numpy(layer._output_dense(attended.astype("float32")))
    return np.where(mask.any(-1)[:, 0, :, None], out, 0.0), weights


def _spy(monkeypatch):
    """Counts the calls of each path's function."""
    calls = dict.fromkeys(SPIES, 0)
    for name, (module, attribute) in SPIES.items():
        original = getattr(module, attribute)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attribute, counted)
    return calls


@pytest.mark.parametrize("modifier", sorted(MODIFIERS))
@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_path_equals_the_oracle(path, modifier, monkeypatch):
    pattern, block_size, length, expected = PATHS[path]
    layer = _layer(pattern, MODIFIERS[modifier], block_size)
    x, padding, segments = _inputs(length)
    calls = _spy(monkeypatch)
    got = to_numpy(
        layer(
            x, x, query_mask=padding, value_mask=padding, segment_ids=segments
        )
    )
    mask = oracle_mask(
        kd.parse_pattern(pattern), length, batch=2, segment_ids=segments
    )
    mask &= padding[:, :, None] & padding[:, None, :]
    want, _ = _oracle(layer, x, x, mask, np.arange(length), np.arange(length))
    np.testing.assert_allclose(got, want, atol=2e-5)
    if TENSORFLOW:
        assert calls[expected] >= 1, calls


@pytest.mark.parametrize("modifier", sorted(MODIFIERS))
def test_the_weights_returned_are_those_of_the_modified_scores(modifier):
    layer = _layer("causal", MODIFIERS[modifier])
    x, padding, _ = _inputs(9)
    _, weights = layer(
        x,
        x,
        query_mask=padding,
        value_mask=padding,
        return_attention_scores=True,
    )
    mask = oracle_mask(kd.parse_pattern("causal"), 9, batch=2)
    mask &= padding[:, :, None] & padding[:, None, :]
    _, want = _oracle(layer, x, x, mask, np.arange(9), np.arange(9))
    np.testing.assert_allclose(to_numpy(weights), want, atol=1e-5)


@pytest.mark.parametrize("modifier", sorted(MODIFIERS))
def test_queries_stand_at_their_offsets(modifier):
    """Per-row offsets: query t of row b stands at offset[b] + t."""
    layer = _layer("causal", MODIFIERS[modifier])
    x, _, _ = _inputs(12)
    offset = np.array([3, 0], "int32")
    got = to_numpy(layer(x[:, 9:], x, offset=offset))
    queries = offset[:, None] + np.arange(3)
    mask = oracle_mask(kd.parse_pattern("causal"), 3, 12, offset, batch=2)
    want, _ = _oracle(layer, x[:, 9:], x, mask, queries, np.arange(12))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("modifier", sorted(MODIFIERS))
def test_a_decoding_step_scores_as_the_full_pass(modifier, monkeypatch):
    """A prompt, then one token at a time into a key/value cache, each row
    at its own position: every step's output equals the full pass's row."""
    layer = _layer("causal", MODIFIERS[modifier])
    x, _, _ = _inputs(10)
    whole = to_numpy(layer(x, x))
    cache = np.zeros((2, 2, 12, HEADS, KEY_DIM), "float32")
    out, cache = layer(x[:, :4], x[:, :4], cache=cache, cache_index=0)
    np.testing.assert_allclose(to_numpy(out), whole[:, :4], atol=2e-5)
    calls = _spy(monkeypatch)
    for t in range(4, 10):
        step, cache = layer(
            x[:, t : t + 1], x[:, t : t + 1], cache=cache, cache_index=t
        )
        np.testing.assert_allclose(to_numpy(step)[:, 0], whole[:, t], atol=2e-5)
    assert calls["single_query"] == 6
    # Rows at different positions: row 1 one step behind row 0.
    cache = np.zeros((2, 2, 12, HEADS, KEY_DIM), "float32")
    _, cache = layer(x[:, :5], x[:, :5], cache=cache, cache_index=0)
    index = np.array([5, 4], "int32")
    step, _ = layer(
        np.stack([x[0, 5:6], x[1, 4:5]]),
        np.stack([x[0, 5:6], x[1, 4:5]]),
        cache=cache,
        cache_index=index,
    )
    np.testing.assert_allclose(
        to_numpy(step)[:, 0], [whole[0, 5], whole[1, 4]], atol=2e-5
    )


def test_a_causal_lm_with_alibi_and_a_relative_bias_decodes_as_it_reads():
    keras.utils.set_random_seed(3)
    lm = kd.models.build_causal_lm(
        50,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        dropout=0.0,
        positions="alibi",
        score="relative(8, 32, causal)",
    )
    assert lm.token_embedding.positions is None  # no position table
    tables = [w for w in lm.weights if "relative_bias" in w.path]
    assert len(tables) == 2  # one per block
    for table in tables:
        table.assign(np.random.default_rng(0).normal(size=table.shape))
    ids = np.random.default_rng(1).integers(1, 50, (2, 11))
    whole = to_numpy(lm(ids))
    cache = lm.init_cache(2, 16)
    logits, cache = lm.call_with_cache(ids[:, :6], cache, 0)
    steps = [to_numpy(logits)]
    for t in range(6, 11):
        step, cache = lm.call_with_cache(ids[:, t : t + 1], cache, t)
        steps.append(to_numpy(step))
    np.testing.assert_allclose(np.concatenate(steps, 1), whole, atol=1e-4)


def test_a_seq2seq_with_alibi_decodes_as_it_reads_and_saves(tmp_path):
    keras.utils.set_random_seed(5)
    model = kd.models.build_seq2seq(
        30,
        40,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        dropout=0.0,
        positions="alibi",
        score="relative(8, 16)",
    )
    blocks = [*model.encoder_blocks, *model.decoder_blocks]
    for block in blocks:
        scores = [str(m) for m in block.self_attention.score]
        assert scores == ["alibi", "relative(8, 16)"]
        for table in block.self_attention.score_variables.values():
            table.assign(np.random.default_rng(0).normal(size=table.shape))
    source = np.array([[5, 6, 7, 0], [8, 9, 0, 0]])
    target = np.array([[1, 8, 9, 10, 11], [1, 12, 13, 0, 0]])
    whole = to_numpy(model({"source_ids": source, "target_ids": target}))
    cache = model.init_cache(source, max_length=5)
    first, cache = model.call_with_cache(target[:, :2], cache, 0)
    steps = [to_numpy(first)]
    for t in range(2, 5):
        step, cache = model.call_with_cache(target[:, t : t + 1], cache, t)
        steps.append(to_numpy(step))
    decoded = np.concatenate(steps, 1)
    real = target != 0
    np.testing.assert_allclose(decoded[real], whole[real], atol=1e-4)
    model.save(tmp_path / "seq2seq.keras")
    loaded = keras.saving.load_model(tmp_path / "seq2seq.keras")
    again = loaded({"source_ids": source, "target_ids": target})
    np.testing.assert_allclose(to_numpy(again), whole, atol=1e-6)


def test_grouped_query_attention_takes_modifiers_per_query_head():
    keras.utils.set_random_seed(0)
    gqa = kd.GroupedQueryAttention(
        head_dim=3,
        num_query_heads=4,
        num_key_value_heads=2,
        pattern="causal",
        score="alibi(0.5, 0.25, 0.125, 0.0625)",
    )
    plain = kd.GroupedQueryAttention(
        head_dim=3, num_query_heads=4, num_key_value_heads=2, pattern="causal"
    )
    x, _, _ = _inputs(9)
    plain(x, x)
    gqa(x, x)
    plain.set_weights(gqa.get_weights())
    _, with_alibi = gqa(x, x, return_attention_scores=True)
    _, without = plain(x, x, return_attention_scores=True)
    # Each query head's weights: softmax of its scores minus slope * distance.
    slopes = np.array([0.5, 0.25, 0.125, 0.0625])[None, :, None, None]
    distance = np.abs(np.arange(9)[:, None] - np.arange(9)[None])
    logits = np.log(np.maximum(to_numpy(without), 1e-30)) - slopes * distance
    logits = np.where(np.tril(np.ones((9, 9), bool)), logits, -np.inf)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(to_numpy(with_alibi), want, atol=1e-5)
    cache = np.zeros((2, 2, 9, 2, 3), "float32")  # two key/value heads
    whole = to_numpy(gqa(x, x))
    _, cache = gqa(x[:, :8], x[:, :8], cache=cache, cache_index=0)
    step, _ = gqa(x[:, 8:], x[:, 8:], cache=cache, cache_index=8)
    np.testing.assert_allclose(to_numpy(step)[:, 0], whole[:, 8], atol=2e-5)


@pytest.mark.parametrize(
    "score, divided",
    [
        ("alibi", True),
        ("alibi, relative(8, 16)", True),  # the mask rides in the table
        ("alibi, softcap(2)", True),  # the mask comes after the cap
        ("alibi(-0.5, -0.25, -0.125, -1e-3)", True),  # the other sign
        ("alibi(0.5, -0.25, 0.125, 0.0625)", False),  # mixed signs
    ],
)
def test_divided_alibi_equals_the_oracle(score, divided, monkeypatch):
    """Bidirectional ALiBi with padding, one example all padding: on
    TensorFlow the queries are divided by their head's slope
    (`_divided_scores`) where the slopes share a sign."""
    layer = _layer("bidirectional", score)
    x, padding, _ = _inputs(20)
    padding[0, 14:] = False
    padding[1] = False
    calls = []
    original = softmax._divided_scores
    monkeypatch.setattr(
        softmax,
        "_divided_scores",
        lambda *a: calls.append(1) or original(*a),
    )
    got = to_numpy(layer(x, x, query_mask=padding, value_mask=padding))
    mask = padding[:, :, None] & padding[:, None, :]
    want, _ = _oracle(layer, x, x, mask, np.arange(20), np.arange(20))
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_array_equal(got[1], 0.0)
    if TENSORFLOW:
        assert bool(calls) == divided


@pytest.mark.parametrize("path", sorted(PATHS))
def test_gradients_reach_the_relative_bias(path):
    pattern, block_size, length, _ = PATHS[path]
    layer = _layer(pattern, "relative(8, 16)", block_size)
    (table,) = layer.score_variables.values()
    inputs = keras.Input((None, WIDTH))
    segments = keras.Input((None,), dtype="int32")
    model = keras.Model(
        [inputs, segments], layer(inputs, inputs, segment_ids=segments)
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x, _, segments_in = _inputs(length)
    before = to_numpy(table).copy()
    model.train_on_batch([x, segments_in], np.ones_like(x))
    after = to_numpy(table)
    assert np.isfinite(after).all()
    assert np.abs(after - before).max() > 1e-6


@pytest.mark.parametrize(
    "mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
@pytest.mark.parametrize("path", ["dense", "blockwise", "causal_chunks"])
def test_scores_stay_float32_under_mixed_precision(mixed_policy, path):
    """At 300 positions ALiBi's penalties reach -300 * slope; added in
    half precision they would round away the differences between
    neighbours. The output stays near float32's, and fully hidden rows
    (padding) stay zero."""
    pattern, block_size, _, _ = PATHS[path]
    layer = _layer(pattern, "alibi(1.0, 0.5, 0.25, 0.125)", block_size)
    x, padding, segments = _inputs(300)
    got = to_numpy(
        layer(
            x, x, query_mask=padding, value_mask=padding, segment_ids=segments
        )
    ).astype("float32")
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[~padding], 0.0)
    mask = oracle_mask(kd.parse_pattern(pattern), 300, batch=2)
    mask &= padding[:, :, None] & padding[:, None, :]
    want, _ = _oracle(layer, x, x, mask, np.arange(300), np.arange(300))
    tolerance = 0.05 if mixed_policy == "mixed_bfloat16" else 0.01
    np.testing.assert_allclose(got, want, atol=tolerance)


def test_modifiers_survive_a_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = kd.TokenEmbedding(30, WIDTH, positions=None)(ids)
    x = kd.MultiHeadAttention(
        HEADS,
        KEY_DIM,
        pattern="causal",
        score=[kd.ALiBi(), kd.RelativeBias(8, 16, name="near")],
    )(x, x)
    x = kd.TransformerBlock(2, 16, score="relative(8, 16, causal)")(x)
    x = kd.TransformerEncoder(16, 2, score=[kd.ScoreFunction(tilt)])(x)
    model = keras.Model(ids, x)
    for weight in model.weights:
        if "near" in weight.path or "relative_bias" in weight.path:
            weight.assign(np.random.default_rng(1).normal(size=weight.shape))
    data = np.random.default_rng(2).integers(1, 30, (2, 7))
    model.save(tmp_path / "scores.keras")
    loaded = keras.saving.load_model(tmp_path / "scores.keras")
    np.testing.assert_allclose(
        to_numpy(loaded(data)), to_numpy(model(data)), atol=1e-6
    )
    configs = [layer.get_config().get("score") for layer in loaded.layers]
    assert "relative(8, 16, causal)" in configs  # text where it reads back
    named = loaded.layers[2].score
    assert named == [kd.ALiBi(), kd.RelativeBias(8, 16, name="near")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"score": "alibi("}, "score text 'alibi\\('"),
        ({"score": 3}, "score must be a score modifier.*score=3"),
        ({"score": "alibi(1.0, 0.5)"}, "one slope per head \\(4\\)"),
        (
            {"score": [kd.RelativeBias(8, 16), kd.RelativeBias(4, 16)]},
            None,
        ),
        (
            {
                "score": [
                    kd.RelativeBias(8, 16, name="t"),
                    kd.RelativeBias(4, 16, name="t"),
                ]
            },
            "share the weight 't' with different shapes",
        ),
    ],
)
def test_bad_modifiers_are_refused_when_the_layer_is_made(arguments, message):
    if message is None:  # two tables of their own names: allowed
        layer = kd.MultiHeadAttention(HEADS, KEY_DIM, **arguments)
        assert sorted(layer.score_variables) == [
            "relative_bias_4_16",
            "relative_bias_8_16",
        ]
        return
    with pytest.raises(ValueError, match=message):
        kd.MultiHeadAttention(HEADS, KEY_DIM, **arguments)


def test_builders_refuse_unknown_positions():
    with pytest.raises(ValueError, match="positions='rotary'"):
        kd.models.build_causal_lm(20, positions="rotary")
    with pytest.raises(ValueError, match="max_length=None"):
        kd.models.build_encoder(20, positions="learned")


def test_keras_own_attention_axes_refuse_modifiers():
    layer = kd.MultiHeadAttention(2, 2, attention_axes=(1, 2), score="alibi")
    x = np.zeros((1, 3, 3, 4), "float32")
    with pytest.raises(ValueError, match="score 'alibi'"):
        layer(x, x)
