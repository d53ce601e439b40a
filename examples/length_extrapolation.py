"""Train short, test long: which positions let a language model read past
its training length?

Press et al. (ICLR 2022, "Train Short, Test Long") report that a causal
language model with ALiBi, trained on short sequences, keeps its
perplexity flat (or better) on longer ones, where sinusoidal positions
fall apart. This repeats the comparison at a small scale on the embedded
corpus. One causal LM (2 blocks, 128 wide, 4 heads) is trained at
T = 64 with the same seeds, steps and data, three ways:

- sinusoidal positions added to the embeddings (any length);
- a learned position table of 512 rows, of which training reaches the
  first 64;
- ALiBi (`positions="alibi"`): no position embedding, a distance penalty
  in every block's scores.

Each is then evaluated on held-out text (documents split by a hash of
their text, 10% held out; the vocabulary is learned from the rest), cut
into non-overlapping windows of 64, 128, 256 and 512 tokens: the
perplexity of every token of the same stretch of text, each predicted
from the tokens before it in its window, as in the paper's Figure 1.
Writes a markdown table, a JSON file of every run and a PNG plot
(default: examples/results/). A rerun with the same settings skips the
runs already in the JSON file, so an interrupted run resumes where it
stopped.

    python examples/length_extrapolation.py [--steps 1200] [--seeds 0 1 2]
"""

import argparse
import math
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _experiment import resumed_runs  # noqa: E402
from _experiment import save_figure  # noqa: E402
from _experiment import save_runs  # noqa: E402
from _experiment import spread  # noqa: E402
from _experiment import write_text  # noqa: E402

POSITIONS = ("sinusoidal", "learned", "alibi")
TRAIN_LENGTH = 64
LENGTHS = (64, 128, 256, 512)
TABLE_ROWS = max(LENGTHS)


def settings_of(args):
    """Everything a run's result depends on."""
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "evaluation_tokens": args.evaluation_tokens,
        "train_length": TRAIN_LENGTH,
        "lengths": list(LENGTHS),
    }


def build_model(positions, vocabulary_size, pad_id):
    from keras_dynmask import models

    return models.build_causal_lm(
        vocabulary_size,
        num_layers=2,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=256,
        pad_id=pad_id,
        dropout=0.1,
        positions=positions,
        max_length=TABLE_ROWS if positions == "learned" else None,
    )


def _fresh_start(seed):
    """Each run as in a new process (Keras' state of the runs before it
    released), seeded."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)


def windows(stream, length, count, rng):
    """`count` windows of `length + 1` consecutive tokens of `stream`, at
    random places: inputs `[:, :-1]`, next tokens `[:, 1:]`."""
    import numpy as np

    starts = rng.integers(0, len(stream) - length - 1, count)
    return np.stack([stream[s : s + length + 1] for s in starts])


def train(positions, seed, settings, streams, tokenizer):
    """The trained model and its mean training loss over the last tenth
    of the steps."""
    import keras
    import numpy as np

    _fresh_start(seed)
    model = build_model(positions, tokenizer.vocabulary_size, tokenizer.pad_id)
    steps, batch = settings["steps"], settings["batch_size"]
    rng = np.random.default_rng(seed)
    data = windows(streams["train"], TRAIN_LENGTH, steps * batch, rng)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=1e-3, warmup_steps=max(1, steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model.fit(
        data[:, :-1],
        data[:, 1:],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[Losses()],
    )
    # Keras' per-batch loss is the mean so far in the epoch: the last is
    # the whole run's; the mean of the last tenth's steps comes from two.
    tenth = max(1, steps // 10)
    recent = losses[-1] * steps - losses[-tenth - 1] * (steps - tenth)
    return model, recent / tenth if steps > tenth else losses[-1]


def perplexity(model, stream, length, tokens, batch_tokens=8192):
    """exp(mean next-token loss) over the first `tokens` predictions of
    `stream`, cut into non-overlapping windows of `length`."""
    import keras
    import numpy as np

    count = tokens // length
    ids = stream[: count * length + 1]
    inputs = np.stack(
        [ids[i * length : (i + 1) * length] for i in range(count)]
    )
    targets = np.stack(
        [ids[i * length + 1 : (i + 1) * length + 1] for i in range(count)]
    )
    rows = max(1, batch_tokens // length)
    total = 0.0
    for first in range(0, count, rows):
        logits = model(inputs[first : first + rows], training=False)
        log_probabilities = keras.ops.log_softmax(
            keras.ops.cast(logits, "float32"), axis=-1
        )
        picked = np.take_along_axis(
            keras.ops.convert_to_numpy(log_probabilities),
            targets[first : first + rows, :, None],
            axis=-1,
        )
        total -= float(picked.sum(dtype="float64"))
    return math.exp(total / (count * length))


def prepare(settings):
    """The tokenizer and the training and held-out token streams: every
    document's ids one after another, each closed by `[SEP]`."""
    import numpy as np

    from keras_dynmask.app import corpus
    from keras_dynmask.app.pretraining import cache_dir
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    parts = {"held_out": [], "train": []}
    for document in corpus.default_corpus():
        share = corpus.held_out_share(document)
        parts["held_out" if share <= 0.10 else "train"].append(document)
    tokenizer = WordPieceTokenizer.build(
        parts["train"], 8000, cache_dir=cache_dir()
    )
    streams = {}
    for name, documents in parts.items():
        ragged = tokenizer.tokenize(documents).to_list()
        streams[name] = np.array(
            [i for row in ragged for i in (*row, tokenizer.sep_id)], "int32"
        )
    needed = settings["evaluation_tokens"] + 1
    if len(streams["held_out"]) < needed:
        raise ValueError(
            f"--evaluation-tokens {settings['evaluation_tokens']} is more "
            f"than the held-out text holds ({len(streams['held_out']) - 1})"
        )
    return tokenizer, streams


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--evaluation-tokens", type=int, default=32768)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="examples/results")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 seed, tiny"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.evaluation_tokens = 12, [0], 2048
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.evaluation_tokens < max(LENGTHS):
        parser.error(f"--evaluation-tokens must be at least {max(LENGTHS)}")

    start = time.time()
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    record = output / "length_extrapolation.json"
    settings = settings_of(args)
    runs = resumed_runs(record, settings)
    tokenizer, streams = prepare(settings)
    print(
        f"{len(streams['train'])} training tokens, "
        f"{settings['steps']} steps of {settings['batch_size']} windows of "
        f"{TRAIN_LENGTH}; {settings['evaluation_tokens']} held-out tokens "
        f"evaluated at {', '.join(map(str, LENGTHS))}"
    )
    for positions in POSITIONS:
        for seed in args.seeds:
            key = f"{positions} {seed}"
            if key in runs:
                continue
            model, loss = train(positions, seed, settings, streams, tokenizer)
            found = {
                str(length): perplexity(
                    model,
                    streams["held_out"],
                    length,
                    settings["evaluation_tokens"],
                )
                for length in LENGTHS
            }
            runs[key] = {"train_loss": loss, "perplexity": found}
            save_runs(record, settings, runs)
            shown = ", ".join(f"{n}: {p:.1f}" for n, p in found.items())
            print(
                f"{positions:10s} seed {seed}: train loss {loss:.3f}; "
                f"perplexity {shown} ({time.time() - start:.0f} s)",
                flush=True,
            )

    table = _table(runs, args, settings)
    write_text(output / "length_extrapolation.md", table)
    _plot(runs, args, output / "length_extrapolation.png")
    print(table)
    print(f"Wrote {output / 'length_extrapolation.md'}, the plot and the runs")


def _values(runs, positions, seeds, length):
    import numpy as np

    return np.array(
        [
            runs[f"{positions} {seed}"]["perplexity"][str(length)]
            for seed in seeds
        ]
    )


def _table(runs, args, settings):
    seeds = args.seeds
    command = (
        "python examples/length_extrapolation.py "
        f"--steps {settings['steps']} --batch-size {settings['batch_size']} "
        f"--evaluation-tokens {settings['evaluation_tokens']} "
        f"--seeds {' '.join(map(str, seeds))}"
    )
    lines = [
        f"Command: `{command}`",
        "",
        "Held-out perplexity (lower is better) of "
        f"{settings['evaluation_tokens']} tokens in non-overlapping "
        "windows of each length, after training "
        f"at {TRAIN_LENGTH}; mean ± sample standard deviation over "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}.",
        "",
        "| positions | "
        + " | ".join(f"T = {n}" for n in LENGTHS)
        + f" | T = {LENGTHS[-1]} / T = {TRAIN_LENGTH} |",
        "|---|" + "---:|" * (len(LENGTHS) + 1),
    ]
    for positions in POSITIONS:
        cells = [
            spread(_values(runs, positions, seeds, n), digits=1)
            for n in LENGTHS
        ]
        ratio = _values(runs, positions, seeds, LENGTHS[-1]) / _values(
            runs, positions, seeds, TRAIN_LENGTH
        )
        lines.append(
            f"| {positions} | {' | '.join(cells)} | {ratio.mean():.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _plot(runs, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    colours = {
        "sinusoidal": "#d95f02",
        "learned": "#7570b3",
        "alibi": "#1b9e77",
    }
    for positions in POSITIONS:
        means = [
            _values(runs, positions, args.seeds, n).mean() for n in LENGTHS
        ]
        for seed in args.seeds:
            ax.plot(
                LENGTHS,
                [_values(runs, positions, [seed], n)[0] for n in LENGTHS],
                "o",
                color=colours[positions],
                ms=3,
                alpha=0.5,
            )
        ax.plot(LENGTHS, means, "-", color=colours[positions], label=positions)
    ax.axvline(TRAIN_LENGTH, color="#888888", linestyle="--", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
    # Plain numbers on the perplexity axis, not powers of ten.
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("evaluation length (tokens); dashed: the training length")
    ax.set_ylabel("held-out perplexity")
    ax.legend()
    ax.set_title(
        f"Trained at T = {TRAIN_LENGTH}, {args.steps} steps; "
        f"{len(args.seeds)} seeds (dots), mean (line)",
        fontsize=10,
    )
    save_figure(figure, path)


if __name__ == "__main__":
    main()
