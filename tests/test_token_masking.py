"""TokenMasking: statistics, exact counts, determinism, inference, export."""

import math

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from tests.helpers import to_numpy

VOCAB = 40
MASK, CLS, SEP, PAD = 1, 2, 3, 0
SPECIAL = [CLS, SEP]


def _batch(rows=256, length=48, seed=0):
    """[CLS] tokens [SEP] then padding, rows of random lengths."""
    rng = np.random.default_rng(seed)
    ids = np.full((rows, length), PAD, "int32")
    for row in range(rows):
        n = int(rng.integers(0, length - 1))
        ids[row, 0] = CLS
        ids[row, 1 : n + 1] = rng.integers(4, VOCAB, n)
        ids[row, n + 1] = SEP
    return ids


def _layer(**kwargs):
    settings = {
        "vocabulary_size": VOCAB,
        "mask_token_id": MASK,
        "unselectable_ids": SPECIAL,
        "max_selections": 48,
        "seed": 1,
        **kwargs,
    }
    return kd.TokenMasking(**settings)


def _interval(successes, trials, p, z=4.5):
    """Whether successes/trials lies within z binomial sigmas of p."""
    sigma = math.sqrt(p * (1 - p) / trials)
    return abs(successes / trials - p) <= z * sigma


@pytest.mark.parametrize(
    "length, ks",
    # Rows of 160 take a quarter-width top_k when the batch wants no more
    # (rate 0.15), the whole width otherwise (rate 0.5).
    [(48, (48, 3)), (160, (None, 160, 200))],
)
def test_exact_count_per_row(length, ks):
    ids = _batch(rows=64, length=length)
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    for k in ks:
        for rate in (0.15, 0.5):
            out = _layer(selection_rate=rate, max_selections=k)(
                ids, training=True
            )
            n = candidates.sum(1)
            want = np.minimum(np.ceil(np.round(n * rate, 6)), k or length)
            mask = np.asarray(out["mask"])
            np.testing.assert_array_equal(mask.sum(1), want)
            assert not (mask & ~candidates).any()
            weights = np.asarray(out["mask_weights"])
            np.testing.assert_array_equal(weights.sum(1), want)
            # The positions list the selected tokens in order.
            for row in range(len(ids)):
                used = np.asarray(out["mask_positions"])[row][weights[row] > 0]
                np.testing.assert_array_equal(used, np.flatnonzero(mask[row]))


def test_bernoulli_without_a_cap_selects_every_winner():
    ids = _batch(rows=32, length=160)
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    out = _layer(count="bernoulli", selection_rate=1.0, max_selections=None)(
        ids, training=True
    )
    np.testing.assert_array_equal(np.asarray(out["mask"]), candidates)


def test_bernoulli_fraction_within_its_binomial_interval():
    layer = _layer(count="bernoulli", selection_rate=0.15)
    selected = trials = 0
    for seed in range(4):
        ids = _batch(seed=seed)
        out = layer(ids, training=True)
        candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
        selected += int(np.asarray(out["mask"]).sum())
        trials += int(candidates.sum())
    assert _interval(selected, trials, 0.15), selected / trials


def test_replacement_split_and_never_special():
    # A tiny vocabulary makes drawing a special id likely if it were allowed.
    layer = kd.TokenMasking(
        vocabulary_size=8,
        mask_token_id=MASK,
        unselectable_ids=SPECIAL,
        selection_rate=0.5,
        max_selections=48,
        seed=3,
    )
    ids = np.where(_batch(seed=5) >= 8, 4 + _batch(seed=5) % 4, _batch(seed=5))
    masked_n = random_n = kept_n = total = 0
    for _ in range(6):
        out = layer(ids, training=True)
        selected = np.asarray(out["mask"])
        new = np.asarray(out["token_ids"])
        assert not selected[ids == PAD].any()
        assert not selected[np.isin(ids, SPECIAL)].any()
        np.testing.assert_array_equal(new[~selected], ids[~selected])
        replaced = new[selected]
        assert not np.isin(replaced, [PAD, CLS, SEP]).any()
        masked_n += int((replaced == MASK).sum())
        random_n += int(
            ((replaced != MASK) & (replaced != ids[selected])).sum()
        )
        kept_n += int((replaced == ids[selected]).sum())
        total += int(selected.sum())
    drawable = 8 - 4  # pad, mask and the two special ids are never drawn
    assert _interval(masked_n, total, 0.8)
    assert _interval(random_n, total, 0.1 * (1 - 1 / drawable))
    assert _interval(kept_n, total, 0.1 + 0.1 / drawable)


def test_whole_words_are_never_split():
    rng = np.random.default_rng(8)
    ids = _batch(seed=8)
    starts = rng.random(ids.shape) < 0.4
    layer = _layer(selection_rate=0.3, max_selections=10)
    words = np.cumsum(starts | (np.arange(ids.shape[1]) == 0), axis=1)
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    for _ in range(3):
        out = layer(ids, word_starts=starts, training=True)
        selected = np.asarray(out["mask"])
        assert selected.sum(1).max() <= 10
        for row in range(ids.shape[0]):
            for word in np.unique(words[row][selected[row]]):
                members = (words[row] == word) & candidates[row]
                assert selected[row][members].all(), (row, word)


@pytest.mark.parametrize("span_masking", [False, True])
def test_continuation_ids_give_the_words_word_starts_give(span_masking):
    """Words from the ids (`continuation_ids`, no dict inputs) are those
    of the `word_starts` flags they imply: the same masks, step by step."""
    ids = _batch(seed=9)
    pieces = [i for i in range(4, VOCAB) if i % 3 == 1]
    starts = ~np.isin(ids, pieces)
    options = {"selection_rate": 0.3, "max_selections": 10, "seed": 4}
    flagged = _layer(span_masking=span_masking, **options)
    from_ids = _layer(
        span_masking=span_masking, continuation_ids=pieces, **options
    )
    for _ in range(3):
        want = flagged(ids, word_starts=starts, training=True)
        got = from_ids(ids, training=True)
        for name in want:
            np.testing.assert_array_equal(to_numpy(got[name]), want[name])
    assert np.isin(ids, pieces).any() and np.asarray(want["mask"]).any()
    clone = kd.TokenMasking.from_config(from_ids.get_config())
    assert clone.continuation_ids == sorted(pieces)


def test_seeds_and_steps():
    ids = _batch(rows=8)
    a, b = _layer(seed=5), _layer(seed=5)
    first_a, first_b = a(ids, training=True), b(ids, training=True)
    second_a = a(ids, training=True)
    np.testing.assert_array_equal(first_a["mask"], first_b["mask"])
    np.testing.assert_array_equal(first_a["token_ids"], first_b["token_ids"])
    assert not np.array_equal(first_a["mask"], second_a["mask"])
    assert int(a.step.numpy()) == 2
    other = _layer(seed=6)(ids, training=True)
    assert not np.array_equal(first_a["mask"], other["mask"])


def test_degenerate_rates_give_golden_outputs():
    ids = np.array([[CLS, 5, 6, 7, SEP, PAD], [CLS, 9, SEP, PAD, PAD, PAD]])
    everything = _layer(
        selection_rate=1.0,
        mask_token_rate=1.0,
        random_token_rate=0.0,
        max_selections=4,
    )(ids, training=True)
    np.testing.assert_array_equal(
        everything["token_ids"],
        [[CLS, MASK, MASK, MASK, SEP, PAD], [CLS, MASK, SEP, PAD, PAD, PAD]],
    )
    np.testing.assert_array_equal(
        everything["mask_positions"], [[1, 2, 3, 0], [1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        everything["mask_ids"], [[5, 6, 7, 0], [9, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        everything["mask_weights"], [[1, 1, 1, 0], [1, 0, 0, 0]]
    )
    kept = _layer(
        selection_rate=1.0, mask_token_rate=0.0, random_token_rate=0.0
    )(ids, training=True)
    np.testing.assert_array_equal(kept["token_ids"], ids)
    assert np.asarray(kept["mask"]).sum() == 4
    nothing = _layer(selection_rate=0.0)(ids, training=True)
    np.testing.assert_array_equal(nothing["token_ids"], ids)
    assert not np.asarray(nothing["mask"]).any()
    assert not np.asarray(nothing["mask_weights"]).any()


def test_padding_mask_is_respected_and_passed_on():
    ids = np.array([[CLS, 5, 6, 7, 8, SEP]])
    x = kd.PaddingMask(pad_id=8)(ids)  # a propagated mask, pad id 8
    out = _layer(selection_rate=1.0, pad_id=None)(x, training=True)
    assert not np.asarray(out["mask"])[0, 4]
    np.testing.assert_array_equal(
        kd.get_keras_mask(out["token_ids"]), [[1, 1, 1, 1, 0, 1]]
    )


def test_inference_is_the_identity_and_reports_mask_tokens():
    ids = np.array([[CLS, 5, MASK, 7, MASK, SEP, PAD]])
    layer = _layer(max_selections=3)
    out = layer(ids, training=False)
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["mask_positions"], [[2, 4, 0]])
    np.testing.assert_array_equal(out["mask_weights"], [[1, 1, 0]])
    assert int(layer.step.numpy()) == 0


def test_static_masks_repeat_dynamic_masks_do_not():
    row = np.r_[CLS, np.arange(4, 34), SEP].astype("int32")
    ids = np.repeat(row[None], 64, axis=0)  # 30 candidates: 5 selected
    static = _layer(static=True, dupe_factor=3)
    dynamic = _layer()
    static_masks, dynamic_masks = set(), set()
    for _ in range(4):
        for layer, seen in ((static, static_masks), (dynamic, dynamic_masks)):
            selected = np.asarray(layer(ids, training=True)["mask"])
            seen.update(row.tobytes() for row in selected)
    assert len(static_masks) <= 3
    assert len(dynamic_masks) > 200  # of 256 sightings


@pytest.mark.tensorflow_only
def test_selection_rate_variable_changes_without_retracing():
    import tensorflow as tf

    layer = _layer(selection_rate=0.1)
    traces = []

    @tf.function
    def count(ids):
        traces.append(1)
        return tf.reduce_sum(
            tf.cast(layer(ids, training=True)["mask"], "int32")
        )

    ids = _batch()
    low = int(count(ids))
    layer.selection_rate_variable.assign(0.5)
    high = int(count(ids))
    assert len(traces) == 1
    assert high > 3 * low


def _mlm_model(masking, hidden=32):
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    masked = masking(ids)
    # The masked ids carry the padding mask; mask_zero keeps it (PAD is 0).
    x = keras.layers.Embedding(VOCAB, hidden, mask_zero=True)(
        masked["token_ids"]
    )
    x = kd.TransformerBlock(2, 64)(x)
    gathered = keras.ops.take_along_axis(
        x, keras.ops.expand_dims(masked["mask_positions"], -1), axis=1
    )
    logits = keras.layers.Dense(VOCAB)(gathered)
    return keras.Model(
        ids, [logits, masked["mask_ids"], masked["mask_weights"]]
    )


class MaskedLMTrainer(keras.Model):
    """Loss on the selected positions only."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        logits, targets, weights = y_pred
        return self.loss_fn(targets, logits, sample_weight=weights)


def test_a_masked_lm_trains_with_fit_and_its_loss_falls():
    keras.utils.set_random_seed(0)
    # Each row repeats one token, so a masked token is predictable from the
    # rest of its row (the model has no positions to use).
    rng = np.random.default_rng(0)
    ids = np.repeat(rng.integers(4, VOCAB, (512, 1)), 24, axis=1)
    ids = np.where(np.arange(24) < rng.integers(8, 25, (512, 1)), ids, PAD)
    ids = ids.astype("int32")
    masking = _layer(selection_rate=0.15, max_selections=6)
    model = MaskedLMTrainer(_mlm_model(masking))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    schedule = kd.schedules.VariableSchedule(
        masking.selection_rate_variable, kd.schedules.linear(0.3, 0.15, 40)
    )
    history = model.fit(
        ids, epochs=8, batch_size=64, verbose=0, callbacks=[schedule]
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert masking.selection_rate_variable.numpy() == pytest.approx(0.15)
    assert int(masking.step.numpy()) == 8 * 8


@pytest.mark.tensorflow_only
def test_a_model_with_the_layer_converts_to_tflite(tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = _mlm_model(_layer(max_selections=4))
    path = str(tmp_path / "mlm.tflite")
    model.export(
        path,
        format="litert",
        verbose=False,
        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
    )
    interpreter = Interpreter(model_path=path)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops)
    assert not any("RANDOM" in name for name in ops)
    runner = interpreter.get_signature_runner()
    for length in (5, 9):
        ids = np.full((2, length), 7, "int32")
        ids[:, 2] = MASK
        ids[1, -1] = PAD
        got = runner(token_ids=ids)
        want = model(ids)
        for value in want:
            assert any(
                g.shape == np.shape(value) and np.allclose(g, value, atol=1e-5)
                for g in got.values()
            )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection_rate": 1.5}, "selection_rate=1.5"),
        ({"mask_token_rate": -0.1}, "mask_token_rate=-0.1"),
        (
            {"mask_token_rate": 0.8, "random_token_rate": 0.3},
            "mask_token_rate \\+ random_token_rate must be <= 1",
        ),
        ({"mask_token_id": VOCAB}, f"mask_token_id={VOCAB}"),
        ({"max_selections": 0}, "max_selections=0"),
        ({"count": "poisson"}, "count='poisson'"),
        ({"vocabulary_size": 4}, "too small to draw random tokens"),
        ({"unselectable_ids": "abc"}, "unselectable_ids='abc'"),
        ({"span_p": 1.5}, "span_p=1.5"),
        ({"max_span_length": 0}, "max_span_length=0"),
        ({"dupe_factor": 0}, "dupe_factor=0"),
        ({"continuation_ids": "ab"}, "continuation_ids='ab'"),
        ({"continuation_ids": [3, VOCAB]}, f"continuation_ids with {VOCAB}"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _layer(**kwargs)


def _truncated_geometric(p=0.2, limit=10):
    lengths = np.arange(1, limit + 1)
    weights = p * (1 - p) ** (lengths - 1)
    weights /= weights.sum()
    mean = (lengths * weights).sum()
    return mean, math.sqrt(((lengths - mean) ** 2 * weights).sum())


def test_span_lengths_follow_the_truncated_geometric():
    from keras_dynmask.core import _random
    from keras_dynmask.core import masked_lm

    rows, length = 64, 512
    keys = _random.row_keys(9, 0, rows)
    scores = _random.unit(_random.bits(keys, length))
    candidates = np.ones((rows, length), bool)
    words = masked_lm.word_ids(candidates, candidates)
    spans = np.asarray(masked_lm.span_ids(words, candidates, scores, 0.2, 10))
    lengths = []
    for row in spans:
        counts = np.bincount(row)
        lengths.extend(counts[:-1])  # the last span is cut by the row's end
    mean, sd = _truncated_geometric()
    assert max(lengths) <= 10 and min(lengths) >= 1
    assert abs(np.mean(lengths) - mean) < 4.5 * sd / math.sqrt(len(lengths))


def test_span_masking_budget_words_and_one_decision_per_span():
    from keras_dynmask.core import _random
    from keras_dynmask.core import masked_lm

    ids = _batch(rows=128, length=64, seed=12)
    starts = np.random.default_rng(12).random(ids.shape) < 0.6
    layer = _layer(
        span_masking=True,
        selection_rate=0.2,
        mask_token_rate=0.5,
        random_token_rate=0.0,
        max_selections=64,
        seed=4,
    )
    out = layer(ids, word_starts=starts, training=True)
    selected = np.asarray(out["mask"])
    masked = np.asarray(out["token_ids"]) == MASK
    # Rebuild the spans the layer used from its keys.
    keys = _random.combine(_random.row_keys(4, 0, ids.shape[0]), 0)  # replica 0
    random_bits = _random.bits(keys, ids.shape[1])
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    words = masked_lm.word_ids(starts, candidates)
    span_scores = _random.unit(_random.stream(random_bits, 3))
    spans = np.asarray(
        masked_lm.span_ids(words, candidates, span_scores, 0.2, 10)
    )
    words = np.asarray(words)
    budget = np.ceil(np.round(candidates.sum(1) * 0.2, 6))
    assert (selected.sum(1) >= budget).all()
    for row in range(ids.shape[0]):
        sizes = []
        for span in np.unique(spans[row][selected[row]]):
            members = spans[row] == span
            sizes.append(members.sum())
            assert selected[row][members].all()
            fates = masked[row][members]
            assert fates.all() or not fates.any()
        # Spans go in until the budget is met: only the last one passes it.
        if sizes:
            assert selected[row].sum() - budget[row] < max(sizes)
        # Whole words: a word is in or out.
        for word in np.unique(words[row][selected[row]]):
            assert selected[row][words[row] == word].all()


def test_int32_random_numbers_equal_the_int64_ones(monkeypatch):
    """JAX without x64 computes the keyed hash in int32 pieces: the same
    numbers, bit for bit, as the int64 path."""
    from keras_dynmask.core import _random

    rng = np.random.default_rng(0)
    values = rng.integers(-(2**31), 2**31, 2000).astype("int64")
    values[:4] = [0, 2**31 - 1, -1, -(2**31)]
    keys = rng.integers(0, 2**31, 2000)

    def numbers():
        dtype = _random.key_dtype()
        folded = _random.combine(keys.astype(dtype), values.astype(dtype))
        row = _random.row_keys(2**40 + 7, 12345, 5)
        stream = _random.stream(_random.bits(row, 300), 3)
        return [np.asarray(x).astype("int64") for x in (folded, row, stream)]

    wide = numbers()
    monkeypatch.setattr(_random, "key_dtype", lambda: "int32")
    narrow = numbers()
    assert narrow[0].dtype == "int64"  # compared as int64 below
    for a, b in zip(wide, narrow, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (wide[2] >= 0).all() and (wide[2] < 2**31).all()


def test_one_sequence_is_masked_as_a_batch_of_one():
    ids = _batch(rows=1, length=20, seed=3)
    batched = _layer(selection_rate=0.3)(ids, training=True)
    single = _layer(selection_rate=0.3)(ids[0], training=True)
    for name, value in batched.items():
        assert keras.ops.shape(single[name]) == keras.ops.shape(value)[1:]
        np.testing.assert_array_equal(
            to_numpy(single[name]), to_numpy(value)[0]
        )


@pytest.mark.tensorflow_only
def test_ragged_rows_are_masked_within_their_own_lengths():
    import tensorflow as tf

    rows = [[CLS, 5, 6, 7, 8, SEP], [CLS, 9, SEP], [CLS, *range(4, 30), SEP]]
    ragged = tf.ragged.constant(rows, dtype="int32")
    dense = tf.constant(
        [row + [PAD] * (28 - len(row)) for row in rows], dtype="int32"
    )
    from_ragged = _layer(selection_rate=0.4, pad_id=None)(ragged, training=True)
    from_dense = _layer(selection_rate=0.4)(dense, training=True)
    assert isinstance(from_ragged["token_ids"], tf.RaggedTensor)
    assert from_ragged["token_ids"].row_lengths().numpy().tolist() == [6, 3, 28]
    np.testing.assert_array_equal(
        from_ragged["token_ids"].to_tensor(PAD).numpy(),
        to_numpy(from_dense["token_ids"]),
    )
    for name in ("mask_positions", "mask_ids", "mask_weights"):
        np.testing.assert_array_equal(
            to_numpy(from_ragged[name]), to_numpy(from_dense[name])
        )
    # In tf.data, from ragged batches.
    layer = _layer(selection_rate=0.4, pad_id=None)
    dataset = (
        tf.data.Dataset.from_tensor_slices(ragged)
        .ragged_batch(3)
        .map(lambda ids: layer(ids, training=True))
    )
    batch = next(iter(dataset))
    positions = batch["mask_positions"].numpy()
    weights = batch["mask_weights"].numpy()
    for row, length in enumerate([6, 3, 28]):
        chosen = positions[row][weights[row] > 0]
        assert len(chosen) == math.ceil(0.4 * (length - 2))
        assert (chosen < length).all()
