"""A short demonstration: a causal Transformer trained with dynamic masks.

The task: continue arithmetic progressions (start, start + step, ...) modulo
the vocabulary, given in sequences of 4 to 24 tokens, each batch padded only
to its own longest sequence. The masks come from the data inside the graph:
padding from the ids, causality and a sliding window from a pattern, and the
loss ignores padding because the output carries the padding mask.
"""

import numpy as np

PAD_ID = 0
VOCABULARY = 32
PATTERN = "causal & window(7)"


def make_sequences(count, seed, min_length=4, max_length=24):
    """Arithmetic progressions over ids 1..VOCABULARY-1 (0 is padding)."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(count):
        length = int(rng.integers(min_length, max_length + 1))
        start, step = rng.integers(0, VOCABULARY - 1, 2)
        ids = 1 + (start + step * np.arange(length)) % (VOCABULARY - 1)
        sequences.append(ids.astype("int32"))
    return sequences


def batches(sequences, batch_size):
    """(inputs, targets) batches padded to their own longest sequence."""
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first : first + batch_size]
        width = max(len(s) for s in chunk) - 1
        inputs = np.full((len(chunk), width), PAD_ID, "int32")
        targets = np.full((len(chunk), width), PAD_ID, "int32")
        for row, sequence in enumerate(chunk):
            inputs[row, : len(sequence) - 1] = sequence[:-1]
            targets[row, : len(sequence) - 1] = sequence[1:]
        yield inputs, targets


def _dataset(sequences, batch_size, seed):
    """A shuffled tf.data pipeline, each batch padded to its own longest."""
    import tensorflow as tf

    data = tf.data.Dataset.from_generator(
        lambda: iter(sequences),
        output_signature=tf.TensorSpec((None,), tf.int32),
    )
    return (
        data.shuffle(len(sequences), seed=seed)
        .map(lambda s: (s[:-1], s[1:]))
        .padded_batch(batch_size, padding_values=PAD_ID)
        .repeat()
    )


def build_model(hidden_dim=64, num_layers=2):
    import keras

    import keras_dynmask

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(VOCABULARY, hidden_dim)(token_ids)
    x = keras_dynmask.PaddingMask(pad_id=PAD_ID)(x, token_ids=token_ids)
    for _ in range(num_layers):
        x = keras_dynmask.TransformerBlock(4, 2 * hidden_dim, pattern=PATTERN)(
            x
        )
    logits = keras.layers.Dense(VOCABULARY, name="logits")(
        keras.layers.LayerNormalization()(x)
    )
    return keras.Model(token_ids, logits)


def _show(mask):
    return "\n".join(
        "    " + "".join("1" if cell else "0" for cell in row) for row in mask
    )


def run_demo(steps_per_epoch=60, epochs=6, seed=0):
    import keras

    import keras_dynmask

    keras.utils.set_random_seed(seed)
    train = make_sequences(steps_per_epoch * 32, seed=seed)
    held_out = make_sequences(256, seed=seed + 1)

    print(f"keras_dynmask demo: a causal Transformer, pattern '{PATTERN}'")
    inputs, _ = next(batches(held_out[:3], 3))
    print(
        "\nA batch of 3 sequences, padded to its own longest "
        f"({inputs.shape[1]}):"
    )
    print(inputs)
    x = keras.layers.Embedding(VOCABULARY, 4)(inputs)
    x = keras_dynmask.PaddingMask(pad_id=PAD_ID)(x, token_ids=inputs)
    print("Padding mask built from the ids in the graph:")
    print(_show(np.asarray(keras_dynmask.get_keras_mask(x))))
    mask = np.asarray(keras_dynmask.AttentionMask(PATTERN)(x))[0]
    print(
        f"Attention mask of the first sequence (query rows, key columns), "
        f"'{PATTERN}' & padding:"
    )
    print(_show(mask))

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(
        f"\nTraining {epochs} epochs of {steps_per_epoch} steps with "
        "model.fit; the loss skips padding because the logits carry the "
        "padding mask."
    )

    model.fit(
        _dataset(train, 32, seed),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        shuffle=False,  # the pipeline shuffles
        verbose=2,
    )

    correct = total = 0
    for inputs, targets in batches(held_out, 64):
        predictions = model.predict(inputs, verbose=0).argmax(-1)
        real = inputs != PAD_ID
        # From the third token on, the step is known and the next id fixed.
        real[:, :2] = False
        correct += int(((predictions == targets) & real).sum())
        total += int(real.sum())
    print(
        f"\nHeld-out next-token accuracy (from the 3rd token): "
        f"{correct / total:.3f} over {total} tokens"
    )

    sequence = np.array([held_out[0][:-1]], "int32")
    short = model.predict(sequence, verbose=0)
    padded = np.pad(sequence, ((0, 0), (0, 64 - sequence.shape[1])))
    long = model.predict(padded, verbose=0)[:, : sequence.shape[1]]
    print(
        f"Padding invariance: one sequence padded to {sequence.shape[1]} and "
        f"to 64 gives logits that differ by at most "
        f"{np.abs(short - long).max():.2e}"
    )
    empty = model.predict(np.zeros((1, 5), "int32"), verbose=0)
    print(
        f"A row that is all padding gives finite output: "
        f"{bool(np.isfinite(empty).all())}"
    )
