"""Masked-LM masking throughput: keras_dynmask against its anchors.

Shapes: B = 256 rows, T = 128 positions, vocabulary 30,000, rows of 64 to
128 real tokens ([CLS] ... [SEP], then padding), selection rate 0.15, at
most K = 20 selections (BERT's setting), then K = T = 128 (no cap below
the row), 80/10/10 replacement: one table per K. Every contender runs in graph
mode (`tf.function`) on the same batch; ours also with XLA (what
`model.compile(jit_compile=True)` gives). tensorflow-text and keras-hub get
the batch as a RaggedTensor (their natural input, converted once, outside
the timing). The tf.data row times a full pipeline pass over 8 cached
batches. The contenders are timed in 5 interleaved rounds (so a change in
the shared machine's load touches all alike). Reported: median milliseconds
per batch, tokens per second (B * T per batch), and the ratio to the faster
anchor.
"""

import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import targets
from benchmarks.timing import interleaved_medians
from keras_dynmask.tf.data import mask_tokens_dataset

BATCH, LENGTH, VOCABULARY = 256, 128, 30000
PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIAL = [PAD, CLS, SEP, MASK]


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((BATCH, LENGTH), PAD, "int32")
    for row in range(BATCH):
        n = int(rng.integers(64, LENGTH + 1))
        ids[row, :n] = rng.integers(1000, VOCABULARY, n)
        ids[row, 0], ids[row, n - 1] = CLS, SEP
    return ids


def _contenders(ids, K):
    dense = tf.constant(ids)
    ragged = tf.RaggedTensor.from_tensor(dense, padding=PAD)

    def ours(count, jit_compile=False):
        layer = kd.TokenMasking(
            VOCABULARY,
            MASK,
            max_selections=K,
            unselectable_ids=SPECIAL,
            count=count,
            seed=0,
        )
        run = tf.function(
            lambda x: layer(x, training=True)["token_ids"],
            jit_compile=jit_compile,
        )
        return lambda: run(dense).numpy()

    def ours_tf_data():
        layer = kd.TokenMasking(
            VOCABULARY, MASK, max_selections=K, unselectable_ids=SPECIAL
        )
        batches = tf.data.Dataset.from_tensors(dense).repeat(8).cache()
        pipeline = mask_tokens_dataset(batches, layer).prefetch(2)

        def run():
            for batch in pipeline:
                batch["token_ids"].numpy()

        return run, 8

    contenders = {
        "keras_dynmask TokenMasking, exact (graph)": (ours("exact"), 1),
        "keras_dynmask TokenMasking, exact (graph, XLA)": (
            ours("exact", jit_compile=True),
            1,
        ),
        "keras_dynmask TokenMasking, bernoulli (graph)": (
            ours("bernoulli"),
            1,
        ),
        "keras_dynmask TokenMasking, bernoulli (graph, XLA)": (
            ours("bernoulli", jit_compile=True),
            1,
        ),
        "keras_dynmask mask_tokens_dataset (tf.data, XLA)": ours_tf_data(),
    }

    import tensorflow_text as text

    selector = text.RandomItemSelector(
        max_selections_per_batch=K,
        selection_rate=0.15,
        unselectable_ids=SPECIAL,
    )
    chooser = text.MaskValuesChooser(VOCABULARY, MASK, 0.8)
    tf_text = tf.function(
        lambda x: text.mask_language_model(x, selector, chooser)[0]
    )
    contenders["tensorflow-text mask_language_model"] = (
        lambda: tf_text(ragged).numpy(),
        1,
    )
    try:
        from keras_hub.layers import MaskedLMMaskGenerator
    except ImportError:
        print("keras-hub is not installed: pip install -e '.[bench]'")
    else:
        generator = MaskedLMMaskGenerator(
            VOCABULARY,
            0.15,
            MASK,
            mask_selection_length=K,
            unselectable_token_ids=SPECIAL,
        )
        hub = tf.function(lambda x: generator(x)["token_ids"])
        contenders["keras-hub MaskedLMMaskGenerator"] = (
            lambda: hub(ragged).numpy(),
            1,
        )
    return contenders


def run(quick=False):
    """Returns markdown lines: one table per K."""
    lines = []
    for k in (20, LENGTH):
        lines += _table(k, quick)
        lines.append("")
    return lines[:-1]


def _table(K, quick):
    repeats, warmup = (5, 2) if quick else (30, 5)
    ids = _batch()
    contenders = _contenders(ids, K)
    medians = interleaved_medians(
        {name: function for name, (function, _) in contenders.items()},
        repeats,
        warmup,
    )
    rows = []
    for name, (_, batches) in contenders.items():
        seconds = medians[name] / batches
        rows.append((name, seconds, BATCH * LENGTH / seconds))
    anchors = [r[2] for r in rows if not r[0].startswith("keras_dynmask")]
    best_anchor = max(anchors)
    lines = [
        f"### Masked-LM masking, B={BATCH}, T={LENGTH}, vocabulary "
        f"{VOCABULARY}, K={K} (median of {repeats} interleaved, {warmup} "
        "warm-up)",
        "",
        "| contender | ms / batch | tokens / s | x faster anchor |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds, rate in rows:
        lines.append(
            f"| {name} | {seconds * 1e3:.2f} | {rate:,.0f} | "
            f"{rate / best_anchor:.2f} |"
        )
    anchor_ms = BATCH * LENGTH / best_anchor * 1e3
    for name, goal in (("(graph)", ">= 4x"), ("(graph, XLA)", ">= 8x")):
        ours = dict((r[0], r) for r in rows)[
            f"keras_dynmask TokenMasking, exact {name}"
        ]
        targets.record(
            f"MLM exact, K = {K}, {name[1:-1]}, vs the faster of "
            "tensorflow-text and keras-hub",
            f"{ours[1] * 1e3:.2f} ms",
            f"{anchor_ms:.2f} ms ({ours[2] / best_anchor:.2f}x)",
            goal,
        )
    return lines
