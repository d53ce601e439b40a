"""Masked-LM masking in tf.data: the layer's rules, keyed per epoch."""

import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from keras_dynmask.tf.data import mask_tokens_dataset
from tests.test_token_masking import PAD
from tests.test_token_masking import SPECIAL
from tests.test_token_masking import _batch
from tests.test_token_masking import _layer


def _epochs(dataset, count):
    return [
        [{k: v.numpy() for k, v in batch.items()} for batch in dataset]
        for _ in range(count)
    ]


def test_dataset_follows_the_layer_rules_and_varies_by_epoch():
    ids = _batch(rows=128)
    masking = _layer(selection_rate=0.2, max_selections=48)
    dataset = mask_tokens_dataset(
        tf.data.Dataset.from_tensor_slices(ids).batch(32), masking
    )
    first, second = _epochs(dataset, 2)
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    want = np.ceil(np.round(candidates.sum(1) * 0.2, 6))
    selected = np.concatenate([batch["mask"] for batch in first])
    np.testing.assert_array_equal(selected.sum(1), want)
    assert not selected[~candidates].any()
    again = np.concatenate([batch["mask"] for batch in second])
    assert not np.array_equal(selected, again)
    # A new pipeline with the same seed reproduces both epochs.
    rerun = _epochs(
        mask_tokens_dataset(
            tf.data.Dataset.from_tensor_slices(ids).batch(32), masking
        ),
        2,
    )
    for old, new in zip(first + second, rerun[0] + rerun[1], strict=True):
        np.testing.assert_array_equal(old["token_ids"], new["token_ids"])


def test_dataset_whole_word_masking():
    ids = _batch(rows=32, seed=4)
    starts = np.random.default_rng(4).random(ids.shape) < 0.5
    masking = _layer(selection_rate=0.3, max_selections=8)
    dataset = mask_tokens_dataset(
        tf.data.Dataset.from_tensor_slices(
            {"token_ids": ids, "word_starts": starts}
        ).batch(32),
        masking,
    )
    selected = next(iter(dataset))["mask"].numpy()
    words = np.cumsum(starts | (np.arange(ids.shape[1]) == 0), axis=1)
    candidates = (ids != PAD) & ~np.isin(ids, SPECIAL)
    for row in range(ids.shape[0]):
        for word in np.unique(words[row][selected[row]]):
            members = (words[row] == word) & candidates[row]
            assert selected[row][members].all()
    assert isinstance(masking, kd.TokenMasking)


def test_dataset_static_masking_repeats_across_epochs():
    row = np.r_[2, np.arange(4, 34), 3].astype("int32")
    ids = np.repeat(row[None], 16, axis=0)
    masking = _layer(static=True, dupe_factor=2)
    dataset = mask_tokens_dataset(
        tf.data.Dataset.from_tensor_slices(ids).batch(16), masking
    )
    seen = set()
    for epoch in _epochs(dataset, 4):
        seen.update(row.tobytes() for row in epoch[0]["mask"])
    assert len(seen) <= 2


def test_a_schedule_changes_the_rate_in_the_pipeline():
    """The pipeline reads the layer's rate variable at every batch, so a
    per-epoch `VariableSchedule` reaches it as `model.fit` drives it
    (`on_epoch_begin`, then a new pass over the dataset)."""
    ids = _batch(rows=64, seed=2)
    masking = _layer(selection_rate=0.1, max_selections=48)
    schedule = kd.schedules.VariableSchedule(
        masking.selection_rate_variable,
        [0.1, 0.3, 0.5].__getitem__,
        per="epoch",
    )
    dataset = mask_tokens_dataset(
        tf.data.Dataset.from_tensor_slices(ids).batch(16), masking
    )
    candidates = ((ids != PAD) & ~np.isin(ids, SPECIAL)).sum(1)
    for epoch, rate in enumerate([0.1, 0.3, 0.5]):
        schedule.on_epoch_begin(epoch)
        selected = np.concatenate(
            [batch["mask"].numpy() for batch in dataset]
        ).sum(1)
        np.testing.assert_array_equal(
            selected, np.ceil(np.round(candidates * rate, 6))
        )


def test_word_starts_pair_each_batch_for_whole_word_masking():
    from keras_dynmask.core.masked_lm import word_starts_from_vocabulary
    from keras_dynmask.tf.data import with_word_starts

    vocabulary = ["[PAD]", "play", "##ing", "ball", "##s", "##y"]
    ids = np.random.default_rng(0).integers(0, 6, (4, 9)).astype("int32")
    dataset = with_word_starts(
        tf.data.Dataset.from_tensor_slices(ids).batch(2), vocabulary
    )
    batches = list(dataset)
    assert len(batches) == 2
    for index, batch in enumerate(batches):
        rows = ids[2 * index : 2 * index + 2]
        np.testing.assert_array_equal(batch["token_ids"], rows)
        np.testing.assert_array_equal(
            batch["word_starts"],
            ~np.isin(rows, [2, 4, 5]),
        )
        np.testing.assert_array_equal(
            batch["word_starts"], word_starts_from_vocabulary(rows, vocabulary)
        )
