"""Model builders: padding invariance, causality, learning, MaskedLM."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask import models
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids
from tests.helpers import to_numpy


def _pad_to(ids, width):
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def _gap(short, long, real):
    return np.abs(to_numpy(short) - to_numpy(long)[:, : short.shape[1]])[
        real
    ].max()


@pytest.mark.parametrize("builder", ["encoder", "causal_lm", "classifier"])
def test_padding_invariance_of_every_builder(builder):
    keras.utils.set_random_seed(0)
    if builder == "encoder":
        model = models.build_encoder(VOCABULARY, **SIZES)
    elif builder == "causal_lm":
        model = models.build_causal_lm(VOCABULARY, **SIZES)
    else:
        model = models.build_classifier(
            models.build_encoder(VOCABULARY, **SIZES), 3
        )
    ids = padded_ids([5, 16, 1], 16)
    short, long = model(ids), model(_pad_to(ids, 64))
    if builder == "classifier":
        assert np.abs(to_numpy(short) - to_numpy(long)).max() < 1e-5
    else:
        assert _gap(short, long, ids != 0) < 1e-5


def test_seq2seq_padding_invariance_on_both_sides():
    keras.utils.set_random_seed(0)
    model = models.build_seq2seq(VOCABULARY, VOCABULARY, **SIZES)
    source, target = padded_ids([4, 9], 9, seed=1), padded_ids([6, 2], 6)
    short = model({"source_ids": source, "target_ids": target})
    long = model(
        {"source_ids": _pad_to(source, 64), "target_ids": _pad_to(target, 64)}
    )
    assert _gap(short, long, target != 0) < 1e-5


def test_causal_lm_never_sees_the_future():
    keras.utils.set_random_seed(0)
    model = models.build_causal_lm(VOCABULARY, **SIZES)
    ids = padded_ids([10], 10)
    base = to_numpy(model(ids))
    for i in range(9):
        changed = ids.copy()
        changed[0, i + 1 :] = (changed[0, i + 1 :] + 7) % VOCABULARY + 1
        after = to_numpy(model(changed))
        np.testing.assert_allclose(
            after[0, : i + 1], base[0, : i + 1], atol=1e-5
        )
        assert np.abs(after[0, i + 1 :] - base[0, i + 1 :]).max() > 1e-4


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_logits_carry_the_padding_mask_to_loss_and_metrics(kind):
    """Padded targets count neither in the loss nor in the accuracy: the
    tied output projection keeps the mask (it once dropped it, and
    `evaluate` then counted every padded position as an easy guess)."""
    keras.utils.set_random_seed(0)
    ids = np.array([[2, 5, 6, 7, 3, 0, 0, 0], [2, 8, 3, 0, 0, 0, 0, 0]])
    inputs, targets = ids[:, :-1], ids[:, 1:]
    if kind == "causal_lm":
        model = models.build_causal_lm(VOCABULARY, **SIZES)
        x = inputs
    else:
        model = models.build_seq2seq(VOCABULARY, VOCABULARY, **SIZES)
        x = {"source_ids": ids, "target_ids": inputs}
    logits = model(x)
    real = inputs != 0
    np.testing.assert_array_equal(kd.get_keras_mask(logits), real)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    got = model.evaluate(x, targets, verbose=0, return_dict=True)
    scores = to_numpy(logits).astype("float64")
    scores -= scores.max(-1, keepdims=True)
    log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(got["loss"], nll[real].mean(), rtol=1e-5)
    right = scores.argmax(-1) == targets
    np.testing.assert_allclose(got["accuracy"], right[real].mean(), rtol=1e-5)


def test_seq2seq_targets_are_causal_and_source_padding_is_ignored():
    keras.utils.set_random_seed(0)
    model = models.build_seq2seq(VOCABULARY, VOCABULARY, **SIZES)
    source, target = padded_ids([5], 5, seed=2), padded_ids([7], 7, seed=3)
    base = to_numpy(model({"source_ids": source, "target_ids": target}))
    for i in range(6):
        changed = target.copy()
        changed[0, i + 1 :] = (changed[0, i + 1 :] + 5) % VOCABULARY + 1
        after = to_numpy(model({"source_ids": source, "target_ids": changed}))
        np.testing.assert_allclose(
            after[0, : i + 1], base[0, : i + 1], atol=1e-5
        )
    # Whatever the padding ids hold never matters: it is masked.
    padded = np.pad(source, ((0, 0), (0, 6)))
    again = to_numpy(model({"source_ids": padded, "target_ids": target}))
    np.testing.assert_allclose(again, base, atol=1e-5)
    # ...and a different source does change the output.
    other = to_numpy(
        model({"source_ids": source[:, ::-1].copy(), "target_ids": target})
    )
    assert np.abs(other - base).max() > 1e-4


BOS, EOS = 1, 2


def _reversal_pairs(count, seed):
    rng = np.random.default_rng(seed)
    sources, targets = [], []
    for _ in range(count):
        tokens = rng.integers(3, 13, int(rng.integers(3, 9)))
        sources.append(tokens)
        targets.append(np.r_[BOS, tokens[::-1], EOS])
    width_s = max(len(s) for s in sources)
    width_t = max(len(t) for t in targets)
    source = np.zeros((count, width_s), "int32")
    target = np.zeros((count, width_t), "int32")
    for row, (s, t) in enumerate(zip(sources, targets, strict=True)):
        source[row, : len(s)] = s
        target[row, : len(t)] = t
    return source, target


def test_seq2seq_learns_to_reverse_sequences():
    keras.utils.set_random_seed(0)
    model = models.build_seq2seq(
        13,
        13,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        dropout=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    source, target = _reversal_pairs(3000, seed=0)
    model.fit(
        {"source_ids": source, "target_ids": target[:, :-1]},
        target[:, 1:],
        batch_size=64,
        epochs=16,
        verbose=0,
    )
    source, target = _reversal_pairs(300, seed=1)
    logits = model.predict(
        {"source_ids": source, "target_ids": target[:, :-1]}, verbose=0
    )
    real = target[:, 1:] != 0
    accuracy = (logits.argmax(-1) == target[:, 1:])[real].mean()
    assert accuracy >= 0.95, accuracy


def _masked_lm(seed=0, compile=True):
    keras.utils.set_random_seed(seed)
    encoder = models.build_encoder(VOCABULARY, **SIZES)
    masking = kd.TokenMasking(
        VOCABULARY,
        mask_token_id=1,
        unselectable_ids=[1],
        max_selections=4,
        selection_rate=0.2,
        seed=seed,
    )
    model = models.MaskedLM(encoder, masking)
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(5e-3))
    return model


def _topic_rows(count, seed):
    """Each row repeats one token: masked tokens follow from the rest."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(rng.integers(4, VOCABULARY, (count, 1)), 16, axis=1)
    lengths = rng.integers(6, 17, (count, 1))
    return np.where(np.arange(16) < lengths, ids, 0).astype("int32")


def test_masked_lm_trains_evaluates_on_fixed_masks_and_fills_masks():
    model = _masked_lm()
    train, held_out = _topic_rows(512, 0), _topic_rows(128, 1)
    before = model.evaluate(held_out, verbose=0, return_dict=True)
    again = model.evaluate(held_out, verbose=0, return_dict=True)
    assert before == again  # the same fixed evaluation masks
    history = model.fit(train, epochs=10, batch_size=64, verbose=0)
    after = model.evaluate(held_out, verbose=0, return_dict=True)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.9
    # Fill-mask: predict draws nothing and predicts the [MASK] positions.
    query = held_out[:2].copy()
    query[:, 2] = 1
    out = model.predict(query, verbose=0)
    np.testing.assert_array_equal(out["mask_positions"][:, 0], [2, 2])
    np.testing.assert_array_equal(out["mask_weights"][:, 1:], 0)
    np.testing.assert_array_equal(
        out["logits"][:, 0].argmax(-1), held_out[:2, 3]
    )


@pytest.mark.tensorflow_only
def test_masked_lm_trains_alike_under_xla():
    """`jit_compile="auto"` compiles `fit` with XLA where a GPU is: the
    masks drawn, the losses and the weights are those without it."""
    train = _topic_rows(64, 2)
    results = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        encoder = models.build_encoder(
            VOCABULARY, **SIZES, pattern="window(4)", score="alibi"
        )
        masking = kd.TokenMasking(VOCABULARY, mask_token_id=1, seed=0)
        model = models.MaskedLM(encoder, masking)
        model.compile("adam", jit_compile=jit_compile)
        history = model.fit(train, epochs=2, batch_size=16, verbose=0)
        results.append((history.history["loss"], model.get_weights()))
    (losses, weights), (xla_losses, xla_weights) = results
    np.testing.assert_allclose(xla_losses, losses, rtol=1e-5)
    for ours, reference in zip(xla_weights, weights, strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_masked_lm_saves_and_loads(tmp_path):
    model = _masked_lm(compile=False)
    query = _topic_rows(2, 3)
    query[:, 1] = 1
    want = model.predict(query, verbose=0)
    path = tmp_path / "mlm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    got = loaded.predict(query, verbose=0)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-6)
    assert loaded.masking.get_config() == model.masking.get_config()


def test_masked_lm_loss_takes_sample_weights_and_regularization():
    model = _masked_lm()
    ids = _topic_rows(4, 5)
    outputs = model(ids, training=True)
    plain = float(model.compute_loss(y_pred=outputs))
    doubled = model.compute_loss(y_pred=outputs, sample_weight=np.full(4, 2.0))
    np.testing.assert_allclose(float(doubled), 2 * plain, rtol=1e-6)
    # A row with weight 0 adds nothing; the mean stays over every selection.
    weights = to_numpy(outputs["mask_weights"])
    only_first = float(
        model.compute_loss(y_pred=outputs, sample_weight=[1.0, 0, 0, 0])
    )
    losses = to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            outputs["mask_ids"], outputs["logits"], from_logits=True
        )
    )
    np.testing.assert_allclose(
        only_first, (losses[0] * weights[0]).sum() / weights.sum(), rtol=1e-5
    )
    # Regularization losses are added, as Keras' own compute_loss does.
    model.transform.kernel.regularizer = keras.regularizers.L2(0.5)
    penalty = float(sum(to_numpy(term) for term in model.losses))
    assert penalty > 0
    regularized = float(model.compute_loss(y_pred=outputs))
    np.testing.assert_allclose(regularized, plain + penalty, rtol=1e-5)


def test_masked_lm_masks_whole_words_given_word_starts():
    model = _masked_lm(compile=False)
    ids = _topic_rows(64, 7)
    starts = np.random.default_rng(7).random(ids.shape) < 0.3
    out = model({"token_ids": ids, "word_starts": starts}, training=True)
    selected = to_numpy(out["mask_positions"])
    weights = to_numpy(out["mask_weights"]) > 0
    words = np.cumsum(starts | (np.arange(ids.shape[1]) == 0), axis=1)
    longest = 0
    for row in range(ids.shape[0]):
        chosen = np.zeros(ids.shape[1], bool)
        chosen[selected[row][weights[row]]] = True
        for word in np.unique(words[row][chosen]):
            members = (words[row] == word) & (ids[row] != 0)
            assert chosen[members].all()
            longest = max(longest, members.sum())
    assert longest > 1  # words of several tokens were selected whole
    # Training on such dicts works as on plain ids.
    model.compile(optimizer="adam")
    history = model.fit(
        {"token_ids": ids, "word_starts": starts}, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def _strategy_model(evaluation_masking):
    keras.utils.set_random_seed(0)
    masking = kd.TokenMasking(
        VOCABULARY,
        mask_token_id=1,
        unselectable_ids=[1],
        max_selections=8,
        selection_rate=0.5,
        span_masking=True,
        seed=3,
    )
    return models.MaskedLM(
        models.build_encoder(VOCABULARY, **SIZES),
        masking,
        evaluation_seed=5,
        evaluation_masking=evaluation_masking,
    )


def test_masked_lm_scores_on_the_evaluation_masking_settings(tmp_path):
    def reference():
        return kd.TokenMasking(
            VOCABULARY,
            mask_token_id=1,
            unselectable_ids=[1],
            max_selections=8,
            selection_rate=0.2,
            seed=3,
        )

    model = _strategy_model(reference())
    model.compile(optimizer="adam")
    config = model.evaluation_masking.get_config()
    assert config["selection_rate"] == 0.2 and not config["span_masking"]
    assert config["static"] and config["seed"] == 5
    # The same weights scored with the reference as the training masking:
    # the same evaluation masks, so the same loss.
    keras.utils.set_random_seed(0)
    plain = models.MaskedLM(
        models.build_encoder(VOCABULARY, **SIZES),
        reference(),
        evaluation_seed=5,
    )
    plain.compile(optimizer="adam")
    held_out = _topic_rows(32, 8)
    ours = model.evaluate(held_out, verbose=0, return_dict=True)
    theirs = plain.evaluate(held_out, verbose=0, return_dict=True)
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-6)
    # Without it, the span masking's own settings make the masks.
    own = _strategy_model(None)
    own.compile(optimizer="adam")
    assert own.evaluation_masking.get_config()["span_masking"]
    other = own.evaluate(held_out, verbose=0, return_dict=True)
    assert not np.isclose(other["loss"], ours["loss"])
    # It survives a .keras round trip.
    model.save(tmp_path / "mlm.keras")
    loaded = keras.saving.load_model(tmp_path / "mlm.keras", compile=False)
    assert loaded.evaluation_masking.get_config() == config
    loaded.compile(optimizer="adam")
    again = loaded.evaluate(held_out, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["loss"], ours["loss"], rtol=1e-6)


def test_masked_lm_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="evaluation_masking=0.15"):
        _strategy_model(0.15)
    with pytest.raises(ValueError, match="vocabulary_size=7"):
        _strategy_model(kd.TokenMasking(7, mask_token_id=1))
    model = _strategy_model(None)
    with pytest.raises(ValueError, match=r"keys \['ids'\]"):
        model({"ids": _topic_rows(2, 0)})
