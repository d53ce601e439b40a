"""Our written-out softmax against stock Keras': the calls that return the
weights, and the training calls that drop them out.

Stock Keras `MultiHeadAttention` leaves its fused kernel for these (and,
once built with `dropout > 0`, for every call, inference too) and
multiplies the keys by the queries in an einsum; ours multiplies the
queries by the keys, the order TensorFlow's einsum runs faster on a CPU,
and at inference takes the fused kernel whatever its dropout.
One self-attention layer (B = 1, hidden 256, 4 heads of 64, dropout 0.1
in both), the same weights, forward pass in a `tf.function`, a causal
mask (`use_causal_mask=True` for stock Keras); the contenders are
checked to agree first, except those that drop weights out (they draw
different masks). Reported: median milliseconds of interleaved rounds
after warm-up and stock Keras' time over ours.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import contenders
from benchmarks import targets
from benchmarks.timing import calls_at
from benchmarks.timing import interleaved_medians

HIDDEN, HEADS = contenders.HIDDEN, contenders.HEADS
# call: its arguments. Stock Keras writes the softmax out for all three
# (built with dropout, it never takes its fused kernel); ours for the
# first two.
CALLS = {
    "weights returned": {"return_attention_scores": True},
    "training, dropout 0.1": {"training": True},
    "inference, built with dropout 0.1": {},
}


def _pair():
    """`(ours, stock)` with dropout 0.1 and one set of weights."""
    keras.utils.set_random_seed(0)
    shape = (1, 8, HIDDEN)
    ours = kd.MultiHeadAttention(
        HEADS, HIDDEN // HEADS, pattern="causal", dropout=0.1
    )
    stock = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS, dropout=0.1)
    for layer in (ours, stock):
        layer.build(shape, shape)
    stock.set_weights([w.numpy() for w in ours.trainable_weights])
    return ours, stock


def _contenders(length):
    """`{(call, who): callable}` at `length`."""
    ours, stock = _pair()
    x = tf.random.stateless_normal((1, length, HIDDEN), seed=(0, length))
    runs = {}
    for call, arguments in CALLS.items():
        for who, layer in (("ours", ours), ("stock", stock)):
            extra = {"use_causal_mask": True} if who == "stock" else {}

            def first(x, layer=layer, arguments=arguments, extra=extra):
                out = layer(x, x, **arguments, **extra)
                return out[0] if isinstance(out, tuple) else out

            runs[call, who] = tf.function(first)
    for call in ("weights returned", "inference, built with dropout 0.1"):
        np.testing.assert_allclose(
            runs[call, "ours"](x).numpy(),
            runs[call, "stock"](x).numpy(),
            atol=1e-4,
        )
    return {key: (lambda run=run: run(x).numpy()) for key, run in runs.items()}


def run(quick=False):
    repeats, warmup = (5, 1) if quick else (15, 3)
    lines = [
        "### Written-out softmax against stock Keras MultiHeadAttention, "
        f"B=1, hidden {HIDDEN}, {HEADS} heads, dropout 0.1, causal (median "
        f"of {repeats} interleaved calls, {8 * repeats} at T = 512, "
        f"{warmup} warm-up)",
        "",
        "| call | T | ours ms | stock Keras ms | x stock speed |",
        "|---|---:|---:|---:|---:|",
    ]
    for length in (512, 2048):
        calls = calls_at(length, repeats)
        ms = {
            key: seconds * 1e3
            for key, seconds in interleaved_medians(
                _contenders(length), calls, warmup
            ).items()
        }
        for call in CALLS:
            ours, stock = ms[call, "ours"], ms[call, "stock"]
            lines.append(
                f"| {call} | {length} | {ours:.1f} | {stock:.1f} | "
                f"{stock / ours:.2f} |"
            )
            targets.record(
                f"causal attention, {call}, T = {length}, vs stock Keras MHA",
                f"{ours:.1f} ms",
                f"{stock:.1f} ms ({stock / ours:.2f}x)",
                ">= 1.00x",
            )
    return lines


if __name__ == "__main__":
    kd.start_devices()
    print("\n".join(run(quick="--quick" in sys.argv)))
