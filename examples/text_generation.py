"""Text generation with dynamic masks: prompts of different lengths at once.

A causal language model from `keras_dynmask.models.build_causal_lm` trains
with `model.fit` on the embedded corpus (the standard library's docstrings
and pydoc topics), in batches padded to their own longest sequence. Then it
continues a batch of prompts of different lengths together, greedily and by
top-k sampling, with a key/value cache so each step costs one position:
every row writes at its own position, and the causal mask with a per-row
offset keeps each prompt's padding out of sight. The example checks what
that promises: the batch equals each prompt generated alone, and the cached
generation equals rerunning the whole model at every step. Last, it saves
the model with its vocabulary, exports it (a SavedModel with a `generate`
signature for TF Serving, a TFLite file with `prefill` and `decode`
signatures for phones) and generates through `keras-dynmask generate` from
each artifact: the same tokens as Keras.

    python examples/text_generation.py [--epochs 4] [--quick] [--output DIR]
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

PROMPTS = [
    "Return the",
    "If the file does not exist,",
    "This module provides",
    "Raise",
    "The default value of the timeout argument is",
    "A list of",
]


def language_model_batches(batches):
    """`(ids[:, :-1], ids[:, 1:])` for next-token training."""
    return batches.map(lambda ids: (ids[:, :-1], ids[:, 1:]))


def encode_prompts(tokenizer, texts):
    """`[CLS]` and the WordPiece ids of each text (no `[SEP]`), as lists."""
    ragged = tokenizer.tokenize(texts)
    return [[tokenizer.cls_id, *row] for row in ragged.to_list()]


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--timing-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run"
    )
    parser.add_argument(
        "--output",
        help="where the model and its exports land (default: "
        "saved_models/text_generation; a temporary folder with --quick)",
    )
    args = parser.parse_args()
    steps_per_epoch = None
    if args.quick:
        args.epochs, args.new_tokens, steps_per_epoch = 1, 8, 40
        args.timing_tokens = 16

    import keras

    from keras_dynmask import models
    from keras_dynmask.app import corpus
    from keras_dynmask.app.pretraining import cache_dir
    from keras_dynmask.models import generation
    from keras_dynmask.tf import data
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    keras_dynmask.start_devices()
    start = time.time()
    keras.utils.set_random_seed(args.seed)
    training, held_out = corpus.split_documents(corpus.default_corpus())
    tokenizer = WordPieceTokenizer.build(training, 8000, cache_dir())
    train_data = language_model_batches(
        data.batched(data.sequences(tokenizer, training, 65), 32, seed=0)
    )
    held_out_data = language_model_batches(
        data.batched(data.sequences(tokenizer, held_out, 65), 32)
    )
    model = models.build_causal_lm(
        tokenizer.vocabulary_size,
        num_layers=2,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=256,
        pad_id=tokenizer.pad_id,
        dropout=0.1,
    )
    steps = args.epochs * (steps_per_epoch or int(train_data.cardinality()))
    model.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                0.0, steps, warmup_target=2e-3, warmup_steps=steps // 10
            )
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        train_data.repeat() if steps_per_epoch else train_data,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the pipeline shuffles
        verbose=2,
    )
    results = model.evaluate(held_out_data, verbose=0, return_dict=True)
    print(
        f"\nHeld-out next-token accuracy {results['accuracy']:.3f}, "
        f"perplexity {np.exp(results['loss']):.1f} "
        f"(vocabulary {tokenizer.vocabulary_size}; "
        f"trained in {time.time() - start:.0f} s)"
    )

    prompts = encode_prompts(tokenizer, PROMPTS)
    print(f"\nOne batch of {len(prompts)} prompts of lengths", end=" ")
    print(sorted(len(p) for p in prompts), "tokens:")

    def run(prompts=prompts, new_tokens=args.new_tokens, **options):
        return generation.generate(
            model,
            prompts,
            new_tokens,
            end_id=tokenizer.sep_id,
            seed=args.seed,
            **options,
        )

    greedy = run()
    for text, continuation in zip(PROMPTS, greedy, strict=True):
        print(f"  greedy: {text} | {tokenizer.decode(continuation)}")
    sampled = run(top_k=args.top_k)
    for text, continuation in zip(PROMPTS, sampled, strict=True):
        print(f"  top-{args.top_k}: {text} | {tokenizer.decode(continuation)}")

    print("\nChecks:")
    for name, batch, options in (
        ("greedy", greedy, {}),
        (f"top-{args.top_k}", sampled, {"top_k": args.top_k}),
    ):
        alone = [run([prompt], **options)[0] for prompt in prompts]
        print(f"  {name} batch == each prompt alone: {batch == alone}")
        (cached, cached_logits) = run(return_logits=True, **options)
        full, full_logits = run(use_cache=False, return_logits=True, **options)
        # Compared up to each row's end (compiled generation computes no
        # logits for a row after its end token).
        gap = max(
            float(np.abs(cached_logits[row, :n] - full_logits[row, :n]).max())
            for row, n in enumerate(map(len, cached))
        )
        print(
            f"  {name} cached == uncached: {cached == full} (largest logit "
            f"difference {gap:.1e})"
        )

    # Time: no end token, so every row runs all steps; traced once first.
    def generate_all(use_cache):
        return generation.generate(
            model, prompts, args.timing_tokens, use_cache=use_cache
        )

    for use_cache in (True, False):
        generate_all(use_cache)
    _, cached_seconds = timed(lambda: generate_all(True))
    _, full_seconds = timed(lambda: generate_all(False))
    print(
        f"  {args.timing_tokens} new tokens for the batch: cached "
        f"{cached_seconds:.2f} s, uncached {full_seconds:.2f} s "
        f"({full_seconds / cached_seconds:.1f}x)"
    )
    output = args.output or (
        tempfile.mkdtemp() if args.quick else "saved_models/text_generation"
    )
    through_exports(
        model,
        tokenizer,
        pathlib.Path(output),
        {"greedy": greedy, f"top-{args.top_k}": sampled},
        ["--max-new-tokens", args.new_tokens, "--seed", args.seed],
        args.top_k,
    )
    print(f"\nDone in {time.time() - start:.0f} s")


def command(*argv):
    """`keras-dynmask ARGV`, run here; what it prints."""
    from keras_dynmask.app import cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if cli.main([str(arg) for arg in argv]) != 0:
            raise RuntimeError(f"keras-dynmask {argv[0]} failed")
    return printed.getvalue()


def through_exports(model, tokenizer, output, wanted, settings, top_k):
    """Saves, exports, and generates from each artifact with the command:
    the same tokens as Keras (TFLite samples with numpy's generator, so
    only its greedy tokens are compared)."""
    output.mkdir(parents=True, exist_ok=True)
    model.save(output / "model.keras")
    tokenizer.save(output / "vocabulary.txt")
    command(
        "export",
        output / "model.keras",
        "--saved-model",
        output / "serving",
        "--tflite",
        output / "model.tflite",
        "--max-length",
        128,
    )
    print(f"\nExported to {output}/: serving/ (TF Serving), model.tflite")
    for name in ("model.keras", "serving", "model.tflite"):
        for label, want in wanted.items():
            options = [] if label == "greedy" else ["--top-k", top_k]
            if name == "model.tflite" and options:
                continue
            printed = command(
                "generate",
                output / name,
                *PROMPTS,
                *settings,
                "--json",
                *options,
            )
            got = json.loads(printed)["new_token_ids"]
            print(
                f"  keras-dynmask generate {name}, {label} == Keras: "
                f"{got == want}"
            )


if __name__ == "__main__":
    main()
