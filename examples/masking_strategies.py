"""Does the masking strategy pay off downstream? Pretrain, fine-tune, compare.

The same encoder, seeds and step budget, pretrained by masked-LM on the
embedded corpus (a fixed subset of its sequences, so that each is seen
about ten times) with six strategies:

- static: BERT's fixed masks, `dupe_factor` copies per sequence (by default
  each copy is seen about 4 times, as in BERT: 40 epochs, 10 copies);
- dynamic: RoBERTa's fresh masks at every step (15%);
- decaying: dynamic, the rate falling linearly from 30% to 15%
  (arXiv 2305.15096);
- 40%: dynamic at a 40% rate (Wettig et al., EACL 2023);
- whole-word: dynamic, a WordPiece word hidden whole;
- span: SpanBERT's spans of whole words (geometric lengths, mean 3.8).

Each encoder is then fine-tuned, and so is one from random initialization
(the floor), on three tasks built from the standard library's docstrings:

- package: which of the 10 largest packages a docstring paragraph is from;
- next sentence: whether sentence B follows sentence A in the same
  docstring (half do; the others are a sentence of another docstring);
- word order: whether a sentence is as written or has two of its words
  swapped (half are), which a bag of words cannot tell.

The documents are split by a hash of their text: held-out masked-LM text
(5%), the tasks' test text (20%, never seen in pretraining or
fine-tuning), and the rest to pretrain and fine-tune on. Held-out
masked-LM loss is scored on the same 15% token masks for every strategy.
Writes a markdown table, a JSON file of every run and a PNG plot (default:
examples/results/). A rerun with the same settings skips the runs already
in the JSON file, so an interrupted run resumes where it stopped.

    python examples/masking_strategies.py [--seeds 0 1 2] [--quick]
"""

import argparse
import os
import pathlib
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _experiment import resumed_runs  # noqa: E402
from _experiment import save_figure  # noqa: E402
from _experiment import save_runs  # noqa: E402
from _experiment import spread  # noqa: E402
from _experiment import write_text  # noqa: E402

STRATEGIES = ("static", "dynamic", "decaying", "40%", "whole-word", "span")
FLOOR = "random init"
TASKS = ("package", "next sentence", "word order")
LENGTH = 64


def settings_of(args):
    """Everything a run's result depends on."""
    passes = args.steps * args.batch_size / args.sequences
    return {
        "steps": args.steps,
        "sequences": args.sequences,
        "batch_size": args.batch_size,
        "dupe_factor": args.dupe_factor or max(1, round(passes / 4)),
        "fine_tune_examples": args.fine_tune_examples,
        "fine_tune_epochs": args.fine_tune_epochs,
        "length": LENGTH,
    }


def build_encoder(tokenizer):
    from keras_dynmask import models

    return models.build_encoder(
        tokenizer.vocabulary_size,
        num_layers=2,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=256,
        pad_id=tokenizer.pad_id,
        dropout=0.1,
    )


def token_masking(tokenizer, seed, **settings):
    from keras_dynmask.layers import TokenMasking

    return TokenMasking(
        tokenizer.vocabulary_size,
        mask_token_id=tokenizer.mask_id,
        unselectable_ids=tokenizer.special_ids,
        # Room for a 40% rate at the full length.
        max_selections=-(-LENGTH * 4 // 10),
        seed=seed,
        **settings,
    )


def _fresh_start(seed):
    """Each run as in a new process: Keras' state of the runs before it
    released (21 models in one process otherwise hold gigabytes)."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)


def pretrain(strategy, seed, settings, data_sets, tokenizer):
    """Returns the encoder's weights and the held-out masked-LM loss."""
    import keras

    from keras_dynmask import models
    from keras_dynmask.models.schedules import VariableSchedule
    from keras_dynmask.models.schedules import linear
    from keras_dynmask.tf import data

    _fresh_start(seed)
    encoder = build_encoder(tokenizer)
    options = {
        "static": {"static": True, "dupe_factor": settings["dupe_factor"]},
        "dynamic": {},
        "decaying": {"selection_rate": 0.30},
        "40%": {"selection_rate": 0.40},
        "whole-word": {},
        "span": {"span_masking": True},
    }[strategy]
    masking = token_masking(tokenizer, seed, **options)
    model = models.MaskedLM(
        encoder,
        masking,
        evaluation_seed=1234,
        # Every strategy is scored on the same 15% token masks.
        evaluation_masking=token_masking(tokenizer, 1234),
    )
    steps = settings["steps"]
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=1e-3, warmup_steps=steps // 10
    )
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate))
    train = data.batched(
        data_sets["pretrain"], settings["batch_size"], seed=seed
    ).repeat()
    if strategy in ("whole-word", "span"):
        train = data.with_word_starts(train, tokenizer.vocabulary)
    callbacks = []
    if strategy == "decaying":
        callbacks.append(
            VariableSchedule(
                masking.selection_rate_variable, linear(0.30, 0.15, steps)
            )
        )
    model.fit(
        train,
        steps_per_epoch=steps,
        epochs=1,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles, with the seed
        verbose=0,
    )
    held_out = model.evaluate(data_sets["held_out"], verbose=0)
    return encoder.get_weights(), float(held_out[0])


def fine_tune(weights, task, seed, settings, tokenizer):
    """Held-out accuracy of the encoder (`weights`, or random) on `task`."""
    import keras

    _fresh_start(seed)
    encoder = build_encoder(tokenizer)
    if weights is not None:
        encoder.set_weights(weights)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    # The average over real tokens: the pooling reads the padding mask
    # the encoder's output carries.
    pooled = keras.layers.GlobalAveragePooling1D()(encoder(token_ids))
    pooled = keras.layers.Dropout(0.1)(pooled)
    logits = keras.layers.Dense(task["classes"])(pooled)
    model = keras.Model(token_ids, logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        task["train_x"],
        task["train_y"],
        batch_size=32,
        epochs=settings["fine_tune_epochs"],
        verbose=0,
    )
    result = model.evaluate(
        task["test_x"], task["test_y"], verbose=0, return_dict=True
    )
    return float(result["accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--sequences", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--dupe-factor",
        type=int,
        default=None,
        help="static copies per sequence (default: each seen about 4 times)",
    )
    parser.add_argument("--fine-tune-examples", type=int, default=2000)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="examples/results")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 seed, tiny"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.sequences, args.seeds = 8, 200, [0]
        args.fine_tune_examples, args.fine_tune_epochs = 200, 1
    for name in (
        "steps",
        "sequences",
        "batch_size",
        "fine_tune_examples",
        "fine_tune_epochs",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    start = time.time()
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    record = output / "masking_strategies.json"
    settings = settings_of(args)
    runs = resumed_runs(record, settings)
    tokenizer, data_sets, tasks = prepare(settings)
    sequences = len(data_sets["pretrain"])
    passes = settings["steps"] * settings["batch_size"] / sequences
    print(
        f"{sequences} pretraining sequences, {settings['steps']} steps of "
        f"{settings['batch_size']} (each sequence seen {passes:.1f} times; "
        f"static: {settings['dupe_factor']} masks each); tasks: "
        + ", ".join(
            f"{name} {len(t['train_y'])} train / {len(t['test_y'])} test, "
            f"{t['classes']} classes"
            for name, t in tasks.items()
        )
    )
    for strategy in (*STRATEGIES, FLOOR):
        for seed in args.seeds:
            key = f"{strategy} {seed}"
            if key in runs:
                continue
            weights, loss = None, None
            if strategy != FLOOR:
                weights, loss = pretrain(
                    strategy, seed, settings, data_sets, tokenizer
                )
            accuracy = {
                name: fine_tune(weights, task, seed, settings, tokenizer)
                for name, task in tasks.items()
            }
            runs[key] = {"masked_lm_loss": loss, "accuracy": accuracy}
            save_runs(record, settings, runs)
            scores = ", ".join(f"{n} {a:.3f}" for n, a in accuracy.items())
            shown = "" if loss is None else f"held-out loss {loss:.3f}, "
            print(
                f"{strategy:11s} seed {seed}: {shown}{scores} "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )

    table = _table(runs, args, settings, tasks)
    write_text(output / "masking_strategies.md", table)
    _plot(runs, args, output / "masking_strategies.png")
    print(table)
    print(f"Wrote {output / 'masking_strategies.md'}, the plot and the runs")


def prepare(settings):
    """The tokenizer, pretraining sequences and the three tasks."""
    import numpy as np

    from keras_dynmask.app import corpus
    from keras_dynmask.app.pretraining import cache_dir
    from keras_dynmask.tf import data
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    parts = {"held_out": [], "test": [], "train": []}
    for document in corpus.default_corpus():
        parts[_part(document)].append(document)
    tokenizer = WordPieceTokenizer.build(
        parts["train"], 8000, cache_dir=cache_dir()
    )
    sequences = data.sequences(tokenizer, parts["train"], LENGTH)
    order = np.random.default_rng(0).permutation(len(sequences))
    data_sets = {
        "pretrain": [sequences[i] for i in order[: settings["sequences"]]],
        "held_out": data.batched(
            data.sequences(tokenizer, parts["held_out"], LENGTH), 32
        ),
    }
    labelled = {"test": [], "train": []}
    for module, document in corpus.stdlib_docstrings():
        part = _part(document)
        if part != "held_out":
            labelled[part].append((module.split(".")[0], document))
    count = settings["fine_tune_examples"]
    tasks = {
        "package": package_task(labelled, count, tokenizer),
        "next sentence": next_sentence_task(labelled, count, tokenizer),
        "word order": word_order_task(labelled, count, tokenizer),
    }
    return tokenizer, data_sets, tasks


def _part(document):
    from keras_dynmask.app import corpus

    share = corpus.held_out_share(document)
    return "held_out" if share <= 0.05 else "test" if share <= 0.25 else "train"


def package_task(labelled, count, tokenizer, classes=10):
    """Paragraphs labelled with their package: the `classes` packages with
    the most training paragraphs, at most `count / classes` of each."""
    import collections

    import numpy as np

    def paragraphs(part):
        for package, document in labelled[part]:
            for paragraph in document.split("\n\n"):
                if len(paragraph.split()) >= 8:
                    yield package, paragraph

    sizes = collections.Counter(p for p, _ in paragraphs("train"))
    names = sorted(p for p, _ in sizes.most_common(classes))
    task = {"classes": len(names), "names": names}
    rng = np.random.default_rng(0)
    for part, cap in (("train", count // len(names)), ("test", None)):
        rows = [(names.index(p), t) for p, t in paragraphs(part) if p in names]
        kept = []
        for label in range(len(names)):
            mine = [row for row in rows if row[0] == label]
            rng.shuffle(mine)
            kept.extend(mine[:cap])
        rng.shuffle(kept)
        task[f"{part}_y"] = np.array([label for label, _ in kept], "int32")
        task[f"{part}_x"] = tokenizer.encode(
            [text for _, text in kept], max_length=LENGTH
        )
    return task


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")


def sentences_of(document, words=(4, None)):
    """The sentences of a docstring, whitespace collapsed, of at least
    `words[0]` (and at most `words[1]`) words."""
    low, high = words
    found = (" ".join(s.split()) for s in _SENTENCE_END.split(document))
    return [
        s for s in found if low <= len(s.split()) <= (high or len(s.split()))
    ]


def sentence_pairs(documents, rng):
    """`(label, A, B)` for each pair of consecutive sentences: half keep
    their B (label 1), half take a sentence of another document (0)."""
    documents = [d for d in documents if len(d) >= 2]
    rows = []
    for index, sentences in enumerate(documents):
        for first, second in zip(sentences, sentences[1:], strict=False):
            if rng.random() < 0.5:
                rows.append((1, first, second))
                continue
            other = index + rng.integers(1, len(documents))
            rows.append(
                (0, first, rng.choice(documents[other % len(documents)]))
            )
    return rows


def swapped_words(sentences, rng):
    """`(label, sentence)`: half as written (1), half with two different
    words swapped (0)."""
    rows = []
    for sentence in sentences:
        words = sentence.split()
        if rng.random() >= 0.5:
            rows.append((1, sentence))
            continue
        first, second = rng.choice(len(words), 2, replace=False)
        if words[first] != words[second]:
            words[first], words[second] = words[second], words[first]
            rows.append((0, " ".join(words)))
    return rows


def next_sentence_task(labelled, count, tokenizer):
    """`[CLS] A [SEP] B [SEP]`: 1 when B follows A in its docstring, 0 when
    B is a sentence of another docstring (half of each)."""
    import numpy as np

    rng = np.random.default_rng(0)
    task = {"classes": 2, "names": ["random", "next"]}
    half = (LENGTH - 3) // 2
    for part, cap in (("train", count), ("test", None)):
        documents = [sentences_of(d) for _, d in labelled[part]]
        rows = sentence_pairs(documents, rng)
        rng.shuffle(rows)
        rows = rows[:cap]
        first = tokenizer.tokenize([a for _, a, _ in rows]).to_list()
        second = tokenizer.tokenize([b for _, _, b in rows]).to_list()
        x = np.full((len(rows), LENGTH), tokenizer.pad_id, "int32")
        for row, (a, b) in enumerate(zip(first, second, strict=True)):
            ids = [tokenizer.cls_id, *a[:half], tokenizer.sep_id]
            ids += [*b[:half], tokenizer.sep_id]
            x[row, : len(ids)] = ids
        task[f"{part}_x"] = x
        task[f"{part}_y"] = np.array([label for label, _, _ in rows], "int32")
    return task


def word_order_task(labelled, count, tokenizer):
    """A docstring sentence as written (1) or with two of its words swapped
    (0), half of each: word order, which a bag of words cannot see."""
    import numpy as np

    rng = np.random.default_rng(0)
    task = {"classes": 2, "names": ["swapped", "as written"]}
    for part, cap in (("train", count), ("test", None)):
        sentences = [
            s for _, d in labelled[part] for s in sentences_of(d, (6, 30))
        ]
        rng.shuffle(sentences)
        rows = swapped_words(sentences[:cap], rng)
        task[f"{part}_x"] = tokenizer.encode(
            [text for _, text in rows], max_length=LENGTH
        )
        task[f"{part}_y"] = np.array([label for label, _ in rows], "int32")
    return task


def _values(runs, strategy, seeds, task=None):
    import numpy as np

    results = [runs[f"{strategy} {seed}"] for seed in seeds]
    if task is None:
        return np.array([r["masked_lm_loss"] for r in results])
    return np.array([r["accuracy"][task] for r in results])


def _table(runs, args, settings, tasks):
    import numpy as np

    seeds = args.seeds
    command = "python examples/masking_strategies.py"
    options = (
        f"--steps {settings['steps']} --sequences {settings['sequences']} "
        f"--fine-tune-examples {settings['fine_tune_examples']} "
        f"--fine-tune-epochs {settings['fine_tune_epochs']} "
        f"--seeds {' '.join(map(str, seeds))}"
    )
    names = ", ".join(tasks["package"]["names"])
    majority = {
        name: np.bincount(t["test_y"]).max() / len(t["test_y"])
        for name, t in tasks.items()
    }
    lines = [
        f"Command: `{command} {options}`",
        "",
        f"Mean ± sample standard deviation over {len(seeds)} "
        f"seed{'s' if len(seeds) > 1 else ''}. "
        "Held-out masked-LM loss on the same 15% token masks for every "
        "strategy; downstream: held-out accuracy after fine-tuning "
        f"({len(tasks['package']['test_y'])} package paragraphs of "
        f"{names}; {len(tasks['next sentence']['test_y'])} sentence "
        f"pairs; {len(tasks['word order']['test_y'])} sentences).",
        "",
        f"| strategy | masked-LM loss | {' | '.join(TASKS)} |",
        "|---|---:|" + "---:|" * len(TASKS),
    ]
    for strategy in (*STRATEGIES, FLOOR):
        loss = (
            "n/a"
            if strategy == FLOOR
            else spread(_values(runs, strategy, seeds))
        )
        cells = [spread(_values(runs, strategy, seeds, t)) for t in TASKS]
        lines.append(f"| {strategy} | {loss} | {' | '.join(cells)} |")
    cells = " | ".join(f"{majority[t]:.3f}" for t in TASKS)
    lines.append(f"| majority class | | {cells} |")
    lines += [
        "",
        "Paired by seed, dynamic minus static (positive: dynamic better; "
        "loss: negative is better):",
        "",
        "| measure | per seed | mean ± sd | seeds dynamic better |",
        "|---|---|---:|---:|",
    ]
    measures = [("masked-LM loss", None, np.less)]
    measures += [(f"{task} accuracy", task, np.greater) for task in TASKS]
    for label, task, better in measures:
        dynamic = _values(runs, "dynamic", seeds, task)
        static = _values(runs, "static", seeds, task)
        difference = dynamic - static
        wins = int(np.sum(better(dynamic, static)))
        lines.append(
            f"| {label} | {', '.join(f'{d:+.3f}' for d in difference)} | "
            f"{spread(difference, signed=True)} | "
            f"{wins} of {len(seeds)} |"
        )
    lines += [
        "",
        "Paired by seed, each strategy minus random initialization "
        "(accuracy; in brackets, the seeds above the floor):",
        "",
        f"| strategy | {' | '.join(TASKS)} |",
        "|---|" + "---:|" * len(TASKS),
    ]
    for strategy in STRATEGIES:
        cells = []
        for task in TASKS:
            gain = _values(runs, strategy, seeds, task) - _values(
                runs, FLOOR, seeds, task
            )
            above = int(np.sum(gain > 0))
            cells.append(f"{spread(gain, signed=True)} ({above}/{len(seeds)})")
        lines.append(f"| {strategy} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _plot(runs, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = args.seeds
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.8), layout="constrained")
    panels = [(None, "held-out masked-LM loss", STRATEGIES)]
    panels += [(t, f"{t} accuracy", (*STRATEGIES, FLOOR)) for t in TASKS]
    for ax, (task, label, strategies) in zip(axes, panels, strict=True):
        for index, strategy in enumerate(strategies):
            values = _values(runs, strategy, seeds, task)
            colour = "#888888" if strategy == FLOOR else "#1f5fa8"
            ax.hlines(values.mean(), index - 0.3, index + 0.3, color=colour)
            ax.plot([index] * len(values), values, "o", color=colour, ms=4)
        if task is not None:
            floor = _values(runs, FLOOR, seeds, task).mean()
            ax.axhline(floor, color="#888888", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(strategies)), strategies, rotation=35)
        ax.set_ylabel(label)
        low = min(_values(runs, s, seeds, task).min() for s in strategies)
        high = max(_values(runs, s, seeds, task).max() for s in strategies)
        margin = (high - low) * 0.3 + 1e-3
        ax.set_ylim(low - margin, high + margin)
    figure.suptitle(
        f"Masking strategies: pretrain {args.steps} steps, fine-tune; "
        f"{len(seeds)} seeds (dots), their mean (line); dashed: the mean "
        "from random initialization",
        fontsize=10,
    )
    save_figure(figure, path)


if __name__ == "__main__":
    main()
