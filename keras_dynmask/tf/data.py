"""The tf.data side: batches padded to their own longest sequence, the
training stream a resumed run rejoins, and masked-LM masking in the input
pipeline (CPU).

Example:

>>> import numpy as np
>>> from keras_dynmask.tf import data
>>> rows = [np.array([2, 5, 6, 3]), np.array([2, 7, 3])]
>>> [batch.numpy().tolist() for batch in data.batched(rows, batch_size=2)]
[[[2, 5, 6, 3], [2, 7, 3, 0]]]
"""

import numpy as np
import tensorflow as tf

from keras_dynmask.core import _random
from keras_dynmask.core._checks import check_int
from keras_dynmask.core.masked_lm import word_starts_from_vocabulary


def sequences(tokenizer, documents, max_length):
    """Cuts tokenized documents into `[CLS] ... [SEP]` sequences of at most
    `max_length` ids; a short document stays one short sequence.

    Returns:
        list of int32 numpy arrays, each of its own length.
    """
    max_length = check_int("max_length", max_length, minimum=3)
    body = max_length - 2
    ragged = tokenizer.tokenize(documents)
    flat = ragged.flat_values.numpy()
    bounds = ragged.row_splits.numpy()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        for first in range(start, end, body):
            piece = flat[first : min(first + body, end)]
            out.append(
                np.concatenate(
                    [[tokenizer.cls_id], piece, [tokenizer.sep_id]]
                ).astype("int32")
            )
    return out


def batched(sequences, batch_size, pad_id=0, seed=None, boundaries=None):
    """A tf.data pipeline of padded batches, each padded only to its own
    longest sequence (dynamic padding), sequences of similar length
    batched together.

    Args:
        sequences: list of 1-D int arrays.
        batch_size: int.
        pad_id: int. Defaults to `0`.
        seed: int or `None`. Shuffles each epoch (reproducibly) when given.
        boundaries: bucket boundaries; defaults to powers of two.

    Returns:
        A `tf.data.Dataset` of int32 `(B, T)` batches, `T` varying.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    rows = tf.data.Dataset.range(len(sequences)).map(_row_reader(sequences))
    if seed is not None:
        rows = rows.shuffle(
            len(sequences), seed=seed, reshuffle_each_iteration=True
        )
    count = batches_per_pass(sequences, batch_size, boundaries)
    data = _bucketed(rows, sequences, batch_size, pad_id, boundaries)
    data = data.apply(tf.data.experimental.assert_cardinality(count))
    return data.prefetch(tf.data.AUTOTUNE)


def training_stream(
    sequences, batch_size, seed, pad_id=0, boundaries=None, start=0
):
    """Endless padded batches for training that a resumed run can rejoin.

    Pass `p` over the sequences comes in an order that is a function of
    `(seed, p)` alone (a stateless permutation), and the stream is the
    passes one after another, each `batches_per_pass` long, so batch `n`
    of the stream is the same in every run: a run resumed after `n`
    batches skips them (`start=n`) and sees what an uninterrupted run
    would have seen next. Give `model.fit` a `steps_per_epoch`.

    Args:
        sequences: list of 1-D int arrays.
        batch_size: int.
        seed: int >= 0.
        pad_id: int. Defaults to `0`.
        boundaries: bucket boundaries; defaults to powers of two.
        start: int >= 0. Batches of the stream to skip.

    Returns:
        An endless `tf.data.Dataset` of int32 `(B, T)` batches.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    start = check_int("start", start, minimum=0)
    row_at = _row_reader(sequences)
    count = len(sequences)

    def one_pass(index):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), index]),
        )
        rows = tf.data.Dataset.from_tensor_slices(order).map(row_at)
        return _bucketed(rows, sequences, batch_size, pad_id, boundaries)

    stream = tf.data.Dataset.counter().flat_map(one_pass)
    return stream.skip(start).prefetch(tf.data.AUTOTUNE)


def streamed_sequences(tokenizer, documents, max_length, chunk=256):
    """`sequences` of an iterable of documents, `chunk` documents at a
    time: a generator that never holds more than a chunk."""
    pending = []
    for document in documents:
        pending.append(document)
        if len(pending) == chunk:
            yield from sequences(tokenizer, pending, max_length)
            pending = []
    if pending:
        yield from sequences(tokenizer, pending, max_length)


def streamed_training_stream(
    make_sequences,
    batch_size,
    seed,
    max_length,
    pad_id=0,
    shuffle_buffer=10_000,
    start=0,
    fixed_length=False,
):
    """Endless padded batches of a corpus too large to hold, for training.

    `make_sequences()` gives the sequences of one pass (a generator, e.g.
    of `streamed_sequences`); passes follow one another, each shuffled in a
    buffer of `shuffle_buffer` sequences, seeded, so batch `n` is the same
    in every run and a resumed run skips to it (`start=n`; the skipped
    batches are read again, not held). Batches are of sequences of similar
    length, each padded to its longest, or, with `fixed_length`, all
    `(batch_size, max_length)`.

    Returns:
        An endless `tf.data.Dataset` of int32 `(B, T)` batches.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    start = check_int("start", start, minimum=0)
    rows = tf.data.Dataset.from_generator(
        make_sequences, output_signature=tf.TensorSpec([None], tf.int32)
    )
    rows = rows.shuffle(
        shuffle_buffer, seed=seed, reshuffle_each_iteration=True
    )
    if fixed_length:
        stream = rows.repeat().padded_batch(
            batch_size, padded_shapes=[max_length], padding_values=pad_id
        )
    else:
        boundaries = _boundaries([max_length], None)
        stream = rows.repeat().bucket_by_sequence_length(
            lambda s: tf.shape(s)[0],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padding_values=pad_id,
        )
    return stream.skip(start).prefetch(tf.data.AUTOTUNE)


def batches_per_pass(sequences, batch_size, boundaries=None):
    """How many batches one pass over `sequences` makes: every bucket ends
    with one partial batch."""
    lengths = [len(s) for s in sequences]
    buckets = np.bincount(
        np.searchsorted(_boundaries(lengths, boundaries), lengths, "right"),
        minlength=len(_boundaries(lengths, boundaries)) + 1,
    )
    return int(sum(-(-n // batch_size) for n in buckets))


def _boundaries(lengths, boundaries):
    if boundaries is not None:
        return boundaries
    return [2**k + 1 for k in range(3, 12) if 2**k < max(lengths)]


def _row_reader(sequences):
    """`i -> sequences[i]` as a TensorFlow function over one flat tensor."""
    if not sequences:
        raise ValueError("sequences is empty: there is nothing to batch")
    lengths = [len(s) for s in sequences]
    flat = tf.constant(np.concatenate(sequences).astype("int32"))
    splits = tf.constant(np.concatenate([[0], np.cumsum(lengths)]), tf.int64)
    return lambda i: flat[splits[i] : splits[i + 1]]


def _bucketed(rows, sequences, batch_size, pad_id, boundaries):
    """`rows` padded in batches of sequences of similar lengths."""
    boundaries = _boundaries([len(s) for s in sequences], boundaries)
    return rows.bucket_by_sequence_length(
        lambda s: tf.shape(s)[0],
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=pad_id,
    )


def mask_tokens_dataset(dataset, masking, seed=None):
    """Applies masked-LM masking to a dataset of token-id batches.

    The `TokenMasking` layer's own rules (`TokenMasking.mask_with_keys`),
    run by tf.data on the CPU instead of inside the model; the layer's
    `selection_rate_variable` is read at every batch, so a
    `VariableSchedule` with `per="epoch"` changes the pipeline's masks too
    (with `per="batch"`, a change reaches batches already prefetched one
    prefetch late). Each
    batch gets its keys from `tf.data.Dataset.random(seed,
    rerandomize_each_iteration=True)`, so the masks are a function of (seed,
    epoch, batch, row): every epoch differs and a rerun reproduces exactly.

    Args:
        dataset: a `tf.data.Dataset` of int `(B, T)` batches (padded with
            the layer's `pad_id`), or of dicts holding `token_ids` and,
            for whole-word masking, `word_starts`.
        masking: a `keras_dynmask.TokenMasking` layer, for its settings.
        seed: int or `None`. Defaults to the layer's seed.

    Returns:
        A dataset of dicts: `token_ids`, `mask_positions`, `mask_ids`,
        `mask_weights`, `mask` (see `TokenMasking`).

    Example:

    >>> import tensorflow as tf, keras_dynmask
    >>> from keras_dynmask.tf.data import mask_tokens_dataset
    >>> masking = keras_dynmask.TokenMasking(100, mask_token_id=1, seed=0)
    >>> ids = tf.data.Dataset.from_tensor_slices([[5, 6, 7, 8, 0]]).batch(1)
    >>> batch = next(iter(mask_tokens_dataset(ids, masking)))
    >>> sorted(batch)
    ['mask', 'mask_ids', 'mask_positions', 'mask_weights', 'token_ids']
    """
    seed = masking.seed if seed is None else seed
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    # XLA fuses the many small integer ops of the masking into a few
    # kernels: about twice as fast on the CPU as running them one by one.
    # The layer's variables (the selection rate) are read at each batch.
    @tf.function(jit_compile=True)
    def mask(token_ids, draw, word_starts):
        rows = tf.range(tf.shape(token_ids)[0], dtype=tf.int64)
        keys = _random.combine(tf.math.floormod(draw, 2**62), rows)
        return masking.mask_with_keys(
            token_ids,
            keys,
            masking.valid_positions(token_ids),
            word_starts,
            seed=seed,
        )

    def apply(element, draw):
        features = element if isinstance(element, dict) else {}
        token_ids = tf.cast(features.get("token_ids", element), tf.int32)
        return mask(token_ids, draw, features.get("word_starts"))

    return tf.data.Dataset.zip(dataset, draws).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def with_word_starts(dataset, vocabulary):
    """Pairs each batch of token ids with the flags of where words start,
    for whole-word or span masking in `MaskedLM.fit`.

    A WordPiece token whose text starts with `##` continues the word
    before it; every other token starts a word.

    Args:
        dataset: a `tf.data.Dataset` of int `(B, T)` batches.
        vocabulary: list of str, the tokens in id order.

    Returns:
        A dataset of dicts: `token_ids` and bool `word_starts` `(B, T)`.

    Example:

    >>> import tensorflow as tf
    >>> from keras_dynmask.tf.data import with_word_starts
    >>> ids = tf.data.Dataset.from_tensors([[1, 2, 3, 0]])
    >>> vocab = ["[PAD]", "play", "##ing", "ball"]
    >>> next(iter(with_word_starts(ids, vocab)))["word_starts"].numpy()
    array([[ True, False,  True,  True]])
    """
    vocabulary = list(vocabulary)

    def pair(token_ids):
        starts = word_starts_from_vocabulary(token_ids, vocabulary)
        return {"token_ids": token_ids, "word_starts": starts}

    return dataset.map(
        pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
