"""Translation with dynamic masks: number words to digits and back.

Sources and targets of every length on both sides ("seven" -> "7",
"forty two thousand six hundred one" -> "42601", and back), generated here.
An encoder-decoder from `keras_dynmask.models.build_seq2seq` trains with
`model.fit` on batches padded to their own longest source and target; each
side's padding mask, the decoder's causal mask and the cross-attention mask
are built in the graph. Reports held-out exact match and token accuracy, and
greedily decodes a batch of sources of different lengths together.

    python examples/translation.py [--epochs 12] [--quick]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# Imported before Keras: it holds back TensorFlow's start-up log lines.
import keras_dynmask  # noqa: E402

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[TO_DIGITS]", "[TO_WORDS]"]
VOCABULARY = (
    SPECIALS + ONES + TENS + ["hundred", "thousand"] + list("0123456789")
)
ID = {token: index for index, token in enumerate(VOCABULARY)}
PAD, BOS, EOS = ID["[PAD]"], ID["[BOS]"], ID["[EOS]"]


def words(n):
    """English words for 0 <= n < 1,000,000, without "and"."""
    if n < 20:
        return [ONES[n]]
    if n < 100:
        return [TENS[n // 10 - 2]] + ([ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        rest = words(n % 100) if n % 100 else []
        return [ONES[n // 100], "hundred"] + rest
    rest = words(n % 1000) if n % 1000 else []
    return words(n // 1000) + ["thousand"] + rest


def pairs(count, seed):
    """(source, target) token lists: half words -> digits, half back."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        # Every magnitude, so lengths vary on both sides.
        n = int(10 ** rng.uniform(0, 6))
        spoken, written = words(n), list(str(n))
        if rng.random() < 0.5:
            out.append((["[TO_DIGITS]", *spoken], written))
        else:
            out.append((["[TO_WORDS]", *written], spoken))
    return out


def encode(rows, extra=()):
    width = max(len(r) for r in rows) + len(extra)
    ids = np.full((len(rows), width), PAD, "int32")
    for i, row in enumerate(rows):
        tokens = [ID[t] for t in row] + list(extra)
        ids[i, : len(tokens)] = tokens
    return ids


def batches(data, batch_size, seed):
    """Teacher-forcing batches, each padded to its own longest sequences;
    similar lengths are batched together."""
    rng = np.random.default_rng(seed)
    order = np.argsort([len(s) + len(t) + rng.random() for s, t in data])
    chunks = [
        order[i : i + batch_size] for i in range(0, len(data), batch_size)
    ]
    rng.shuffle(chunks)
    for chunk in chunks:
        sources = encode([data[i][0] for i in chunk])
        targets = encode([["[BOS]", *data[i][1], "[EOS]"] for i in chunk])
        yield (
            {"source_ids": sources, "target_ids": targets[:, :-1]},
            targets[:, 1:],
        )


def decode(model, sources, max_length=30):
    """Greedy decoding of a batch of sources of different lengths, in
    lockstep: a finished row is padded, and padding is masked."""
    targets = np.full((len(sources), 1), BOS, "int32")
    done = np.zeros(len(sources), bool)
    for _ in range(max_length):
        logits = model.predict(
            {"source_ids": sources, "target_ids": targets}, verbose=0
        )
        following = logits[:, -1].argmax(-1).astype("int32")
        following[done] = PAD
        done |= following == EOS
        targets = np.concatenate([targets, following[:, None]], axis=1)
        if done.all():
            break
    out = []
    for row in targets[:, 1:]:
        tokens = [VOCABULARY[i] for i in row if i != PAD]
        out.append(
            tokens[: tokens.index("[EOS]")] if "[EOS]" in tokens else tokens
        )
    return out


def _show(tokens):
    """Digits joined into a number, words spaced."""
    if tokens and all(t.isdigit() for t in tokens):
        return "".join(tokens)
    return " ".join(tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run"
    )
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.epochs = 2000, 2

    import keras
    import tensorflow as tf

    from keras_dynmask import models

    keras_dynmask.start_devices()
    start = time.time()
    keras.utils.set_random_seed(args.seed)
    train = pairs(args.train_size, seed=args.seed)
    held_out = pairs(500, seed=args.seed + 1000)
    model = models.build_seq2seq(
        len(VOCABULARY),
        len(VOCABULARY),
        num_layers=2,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=256,
        dropout=0.1,
    )
    steps = args.epochs * -(-len(train) // 64)  # batches of 64
    model.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                0.0, steps, warmup_target=2e-3, warmup_steps=steps // 10
            )
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    signature = (
        {
            "source_ids": tf.TensorSpec((None, None), tf.int32),
            "target_ids": tf.TensorSpec((None, None), tf.int32),
        },
        tf.TensorSpec((None, None), tf.int32),
    )
    count = -(-len(train) // 64)
    for epoch in range(args.epochs):
        data = tf.data.Dataset.from_generator(
            lambda epoch=epoch: batches(train, 64, args.seed + epoch),
            output_signature=signature,
        ).apply(tf.data.experimental.assert_cardinality(count))
        history = model.fit(data, verbose=0, shuffle=False)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss "
            f"{history.history['loss'][-1]:.4f} ({time.time() - start:.0f} s)"
        )

    sources = encode([s for s, _ in held_out])
    guesses = decode(model, sources)
    truths = [t for _, t in held_out]
    exact = np.mean([g == t for g, t in zip(guesses, truths, strict=True)])
    hits = sum(
        sum(a == b for a, b in zip(g, t, strict=False))
        for g, t in zip(guesses, truths, strict=True)
    )
    token_accuracy = hits / sum(len(t) for t in truths)
    print(
        f"\nHeld-out ({len(held_out)} pairs): exact match {exact:.3f}, "
        f"token accuracy {token_accuracy:.3f}"
    )
    print("\nA batch of sources of different lengths, decoded together:")
    sample = [held_out[i] for i in range(6)]
    decoded = decode(model, encode([s for s, _ in sample]))
    for (source, target), guess in zip(sample, decoded, strict=True):
        mark = "ok" if guess == target else "WRONG"
        print(f"  {_show(source[1:]):45s} -> {_show(guess)}  [{mark}]")
    print(f"\nDone in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
