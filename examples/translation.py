"""Translation with dynamic masks: number words to digits and back.

Sources and targets of every length on both sides ("seven" -> "7",
"forty two thousand six hundred one" -> "42601", and back), generated here.
An encoder-decoder from `keras_dynmask.models.build_seq2seq` trains with
`model.fit` on batches padded to their own longest source and target; each
side's padding mask, the decoder's causal mask and the cross-attention mask
are built in the graph. Greedy decoding of a batch of sources of different
lengths runs as one compiled loop (`keras_dynmask.generation.generate`):
the encoder once, then one position per step with the decoder's
self-attention cache and its cross-attention keys and values of the
source. Reports held-out exact match and token accuracy, and the time
against rerunning the whole model at every step. Last, it saves the model,
exports it (a SavedModel with a `generate` signature that takes the source
ids, a TFLite file with `prefill` and `decode` signatures) and decodes
through `keras-dynmask generate --source` from each artifact: the same
tokens as Keras.

    python examples/translation.py [--epochs 12] [--quick] [--output DIR]
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import tempfile
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


def translate(model, sources, max_length=30, **options):
    """Greedy translations of a batch of sources (token lists) of
    different lengths, decoded together: each starts from `[BOS]` and
    stops at `[EOS]`."""
    from keras_dynmask.models import generation

    ids = [[ID[t] for t in source] for source in sources]
    new = generation.generate(
        model,
        [[BOS]] * len(ids),
        max_length,
        end_id=EOS,
        sources=ids,
        **options,
    )
    return [[VOCABULARY[i] for i in row if i != EOS] for row in new]


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
    parser.add_argument(
        "--output",
        help="where the model and its exports land (default: "
        "saved_models/translation; a temporary folder with --quick)",
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

    sources = [s for s, _ in held_out]
    translate(model, sources)  # compiled once, then timed
    began = time.time()
    guesses = translate(model, sources)
    seconds = time.time() - began
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
    began = time.time()
    rerun = translate(model, sources, use_cache=False)
    rerun_seconds = time.time() - began
    print(
        f"Decoding the {len(sources)} sources in one batch: {seconds:.2f} s "
        f"compiled with the caches, {rerun_seconds:.2f} s rerunning the "
        f"whole model at every step ({rerun_seconds / seconds:.1f}x); the "
        f"same translations: {rerun == guesses}"
    )
    print("\nA batch of sources of different lengths, decoded together:")
    sample = [held_out[i] for i in range(6)]
    decoded = translate(model, [s for s, _ in sample])
    for (source, target), guess in zip(sample, decoded, strict=True):
        mark = "ok" if guess == target else "WRONG"
        print(f"  {_show(source[1:]):45s} -> {_show(guess)}  [{mark}]")
    output = args.output or (
        tempfile.mkdtemp() if args.quick else "saved_models/translation"
    )
    through_exports(model, pathlib.Path(output), [s for s, _ in sample])
    print(f"\nDone in {time.time() - start:.0f} s")


def command(*argv):
    """`keras-dynmask ARGV`, run here; what it prints."""
    from keras_dynmask.app import cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if cli.main([str(arg) for arg in argv]) != 0:
            raise RuntimeError(f"keras-dynmask {argv[0]} failed")
    return printed.getvalue()


def through_exports(model, output, sources):
    """Saves, exports, and decodes `sources` from each artifact with the
    command: the same tokens as Keras."""
    output.mkdir(parents=True, exist_ok=True)
    model.save(output / "model.keras")
    command(
        "export",
        output / "model.keras",
        "--saved-model",
        output / "serving",
        "--tflite",
        output / "model.tflite",
        "--max-length",
        64,
    )
    print(f"\nExported to {output}/: serving/ (TF Serving), model.tflite")
    from keras_dynmask.models import generation

    ids = [[ID[t] for t in source] for source in sources]
    want = generation.generate(
        model, [[BOS]] * len(ids), 30, end_id=EOS, sources=ids
    )
    flags = []
    for row in ids:
        flags += ["--source", ",".join(map(str, row))]
    for name in ("model.keras", "serving", "model.tflite"):
        printed = command(
            "generate",
            output / name,
            "--ids",
            BOS,
            *flags,
            "--end-id",
            EOS,
            "--max-new-tokens",
            30,
            "--json",
        )
        got = json.loads(printed)["new_token_ids"]
        print(f"  keras-dynmask generate {name} == Keras: {got == want}")


if __name__ == "__main__":
    main()
