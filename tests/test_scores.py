"""Score modifiers against numpy oracles: per head, per position, with
offsets; composition in order; configs; bad arguments."""

import keras
import numpy as np
import pytest

from keras_dynmask.core.scores import ALiBi
from keras_dynmask.core.scores import RelativeBias
from keras_dynmask.core.scores import ScoreFunction
from keras_dynmask.core.scores import SoftCap
from keras_dynmask.core.scores import alibi_slopes
from keras_dynmask.core.scores import apply_scores
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import parse_scores
from tests.helpers import to_numpy
from tests.oracle import t5_bucket

B, N, T, S = 2, 6, 3, 7
RNG = np.random.default_rng(0)
SCORES = RNG.normal(0, 4, (B, N, T, S)).astype("float32")
# Queries of each row at their own offsets (a cached decoding step).
QUERIES = np.array([[4, 5, 6], [0, 1, 2]], "int32")
KEYS = np.arange(S, dtype="int32")


def test_alibi_slopes_are_the_papers():
    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    # Not a power of two: 4 heads' slopes, then every other of 8 heads'.
    np.testing.assert_allclose(
        alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    )
    assert len(alibi_slopes(12)) == len(set(alibi_slopes(12))) == 12


def test_alibi_equals_its_oracle_per_head_and_position():
    out = to_numpy(apply_scores([ALiBi()], SCORES, QUERIES, KEYS))
    slopes = np.array(alibi_slopes(N))
    distance = np.abs(QUERIES[:, None, :, None] - KEYS[None, None, None, :])
    want = SCORES - slopes[None, :, None, None] * distance
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    given = to_numpy(
        apply_scores([ALiBi(slopes=[0.5] * N)], SCORES, QUERIES, KEYS)
    )
    np.testing.assert_allclose(given, SCORES - 0.5 * distance, atol=1e-6)


def test_soft_cap_equals_its_oracle():
    out = to_numpy(apply_scores([SoftCap(3.0)], SCORES, QUERIES, KEYS))
    np.testing.assert_allclose(out, 3.0 * np.tanh(SCORES / 3.0), atol=1e-6)
    assert np.abs(out).max() < 3.0


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_equals_t5s_buckets(bidirectional):
    modifier = RelativeBias(8, 20, bidirectional=bidirectional)
    ((name, shape),) = modifier.weight_shapes(N).items()
    assert shape == (8, N)
    table = RNG.normal(size=shape).astype("float32")
    queries = np.array([[0, 30, 60], [5, 6, 7]], "int32")
    keys = np.array([0, 1, 3, 9, 25, 40, 90], "int32")
    out = to_numpy(
        apply_scores([modifier], SCORES, queries, keys, {name: table})
    )
    want = SCORES.copy()
    for b in range(B):
        for t in range(T):
            for s in range(S):
                bucket = t5_bucket(
                    int(keys[s] - queries[b, t]), 8, 20, bidirectional
                )
                want[b, :, t, s] += table[bucket]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_relative_bias():
    modifier = RelativeBias(8, 20)
    ((name, shape),) = modifier.weight_shapes(N).items()
    table = keras.Variable(np.zeros(shape, "float32"))

    def loss():
        out = apply_scores([modifier], SCORES, QUERIES, KEYS, {name: table})
        return keras.ops.sum(keras.ops.multiply(out, SCORES))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss()
        gradient = to_numpy(tape.gradient(value, table))
    elif backend == "jax":
        import jax

        def pure(values):
            out = apply_scores(
                [modifier], SCORES, QUERIES, KEYS, {name: values}
            )
            return keras.ops.sum(keras.ops.multiply(out, SCORES))

        gradient = np.asarray(jax.grad(pure)(table.value))
    else:
        value = loss()
        value.backward()
        gradient = table.value.grad.cpu().numpy()
    assert np.abs(gradient).sum() > 0
    assert gradient.shape == shape


def test_user_function_sees_batch_head_and_absolute_positions():
    def marked(score, batch, head, query, key):
        return score + 1000 * batch + 100 * head + 10 * query - key

    out = to_numpy(apply_scores([ScoreFunction(marked)], SCORES, QUERIES, KEYS))
    b, n, t, s = np.meshgrid(
        np.arange(B), np.arange(N), np.arange(T), np.arange(S), indexing="ij"
    )
    want = SCORES + 1000 * b + 100 * n + 10 * QUERIES[b, t] - KEYS[s]
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_modifiers_apply_in_order():
    capped_first = to_numpy(
        apply_scores([SoftCap(2.0), ALiBi()], SCORES, QUERIES, KEYS)
    )
    alibi_first = to_numpy(
        apply_scores([ALiBi(), SoftCap(2.0)], SCORES, QUERIES, KEYS)
    )
    alibi = to_numpy(apply_scores([ALiBi()], SCORES, QUERIES, KEYS))
    np.testing.assert_allclose(
        capped_first, 2.0 * np.tanh(SCORES / 2.0) + alibi - SCORES, atol=1e-5
    )
    np.testing.assert_allclose(
        alibi_first, 2.0 * np.tanh(alibi / 2.0), atol=1e-6
    )


@pytest.mark.parametrize(
    "modifier",
    [ALiBi(), ALiBi([0.5, 0.25]), SoftCap(30), RelativeBias(16, 64, False)],
    ids=str,
)
def test_configs_and_text_round_trip(modifier):
    config = keras.saving.serialize_keras_object(modifier)
    again = keras.saving.deserialize_keras_object(config)
    assert again == modifier and str(again) == str(modifier)
    assert parse_scores(str(modifier)) == [modifier]


def test_text_reads_modifiers_in_order():
    assert parse_scores("alibi, softcap(30)") == [ALiBi(), SoftCap(30.0)]
    assert parse_scores(" ALiBi(0.5, 0.25) ,relative(16, 64, causal)") == [
        ALiBi([0.5, 0.25]),
        RelativeBias(16, 64, bidirectional=False),
    ]
    assert parse_scores("relative") == [RelativeBias()]
    assert as_scores(None) == []
    assert as_scores("alibi") == as_scores(ALiBi()) == as_scores([ALiBi()])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rope", "'rope' is not a modifier"),
        ("alibi, ", "'' is not a modifier"),
        ("alibi(", "unbalanced parentheses"),
        ("softcap(2)), alibi", "unbalanced parentheses"),
        ("softcap", "'softcap' has the wrong number of arguments"),
        ("softcap(0)", r"'softcap\(0\)' does not read \(cap must be"),
        ("relative(8, 20, sideways)", "does not read"),
        ("alibi(x)", "does not read"),
    ],
)
def test_bad_text_gets_clear_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_scores(text)


def test_bad_score_arguments_name_the_argument():
    with pytest.raises(ValueError, match="text=3"):
        parse_scores(3)
    with pytest.raises(ValueError, match=r"score=\[1\]"):
        as_scores([1])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SoftCap(0), "cap=0"),
        (lambda: SoftCap("30"), "cap='30'"),
        (lambda: RelativeBias(num_buckets=2), "num_buckets=2"),
        (lambda: RelativeBias(8, max_distance=1), "max_distance=1"),
        (lambda: ALiBi(slopes=[]), r"slopes=\[\]"),
        (lambda: ScoreFunction(3), "function=3"),
    ],
)
def test_bad_arguments_get_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_alibi_slopes_must_match_the_heads():
    with pytest.raises(ValueError, match="one slope per head"):
        apply_scores([ALiBi([0.5, 0.25])], SCORES, QUERIES, KEYS)
