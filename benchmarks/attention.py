"""Our attention against stock Keras `MultiHeadAttention` on the same mask.

One self-attention layer (B = 1, hidden 256, 4 heads of 64), the same
weights in every contender, forward pass in a `tf.function`:

- dense: `kd.MultiHeadAttention(pattern="causal & window(255)",
  block_size=None)`, which builds its `(T, T)` mask in the graph, against
  stock Keras given that mask precomputed (a constant of the graph);
- causal: `kd.MultiHeadAttention(pattern="causal")` against stock Keras
  with `use_causal_mask=True`;
- packed documents: 8 documents of T / 8 tokens in one row,
  `pattern="segment & causal"` with segment ids, against stock Keras given
  the same mask precomputed.

Every pair is checked to give the same output. Reported: median
milliseconds of interleaved rounds after warm-up, and stock's time over
ours (above 1: we are faster).
"""

import keras
import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import targets
from benchmarks.timing import interleaved_medians

HIDDEN, HEADS, DOCUMENTS = 256, 4, 8


def _pair(pattern, length, block_size=None):
    """`(ours, stock)` callables on one input, and the input."""
    keras.utils.set_random_seed(0)
    shape = (1, 8, HIDDEN)
    ours = kd.MultiHeadAttention(
        HEADS, HIDDEN // HEADS, pattern=pattern, block_size=block_size
    )
    stock = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)
    ours.build(shape, shape)
    stock.build(shape, shape)
    stock.set_weights([w.numpy() for w in ours.trainable_weights])
    x = tf.random.stateless_normal((1, length, HIDDEN), seed=(0, length))
    segments = tf.range(length)[None] // (length // DOCUMENTS)
    inputs = {"segment_ids": segments} if "segment" in pattern else {}
    run_ours = tf.function(lambda x: ours(x, x, **inputs))
    if pattern == "causal":
        run_stock = tf.function(lambda x: stock(x, x, use_causal_mask=True))
    else:
        mask = kd.parse_pattern(pattern).mask(length, **inputs)
        run_stock = tf.function(lambda x: stock(x, x, attention_mask=mask))
    np.testing.assert_allclose(
        run_ours(x).numpy(), run_stock(x).numpy(), atol=1e-4
    )
    return (
        lambda: run_ours(x).numpy(),
        lambda: run_stock(x).numpy(),
    )


CASES = (
    # (name, pattern, what stock gets, target for stock time / ours)
    ("dense", "causal & window(255)", "the mask, precomputed", ">= 1.00x"),
    ("causal", "causal", "use_causal_mask=True", ">= 1.8x"),
    (
        f"{DOCUMENTS} packed documents",
        "segment & causal",
        "the mask, precomputed",
        ">= 4x (vs dense)",
    ),
)


def run(quick=False):
    lengths = (512, 4096)
    repeats, warmup = (5, 1) if quick else (15, 3)
    lines = [
        f"### Attention against stock Keras MultiHeadAttention, B=1, hidden "
        f"{HIDDEN}, {HEADS} heads (median of {repeats} interleaved, {warmup} "
        "warm-up)",
        "",
        "| case | T | stock Keras gets | ours ms | stock Keras ms | "
        "x stock speed |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, pattern, given, target in CASES:
        for length in lengths:
            ours, stock = _pair(pattern, length)
            medians = interleaved_medians(
                {"ours": ours, "stock": stock}, repeats, warmup
            )
            ratio = medians["stock"] / medians["ours"]
            lines.append(
                f"| {name} (`{pattern}`) | {length} | {given} | "
                f"{medians['ours'] * 1e3:.1f} | "
                f"{medians['stock'] * 1e3:.1f} | {ratio:.2f} |"
            )
            targets.record(
                f"{name} attention, T = {length}, vs stock Keras MHA ({given})",
                f"{medians['ours'] * 1e3:.1f} ms",
                f"{medians['stock'] * 1e3:.1f} ms ({ratio:.2f}x)",
                target,
            )
    return lines


if __name__ == "__main__":
    kd.start_devices()
    print("\n".join(run()))
