"""Masked attention as the sequence grows: time and peak memory.

One self-attention layer (B = 1, hidden 256, 4 heads of 64) with a causal
sliding window of 256 keys (`"causal & window(255)"`), for T from 128 to
4,096, three ways:

- keras_dynmask auto: `MultiHeadAttention(pattern=...)` as it comes, which
  attends block by block (blocks of 128 queries, 3 key blocks each) over
  only the keys the window reaches once that is at most half of T (here
  from T = 768), and densely below;
- keras_dynmask dense: the same layer with `block_size=None`, a full
  `(B, T, T)` mask and `T x T` scores;
- stock Keras: `keras.layers.MultiHeadAttention` given the same `(B, T, T)`
  mask, computed once outside the timed call (the anchor).

All three are checked to give the same output (the stock layer with the
same weights). Time: the forward pass in a `tf.function`, median of
interleaved rounds after warm-up. Peak memory: each (way, T) runs in its
own process; the figure is how far the call raises the process's peak
resident memory (`VmHWM`) above where a T = 8 call left it.
"""

import json
import sys

import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import contenders
from benchmarks import targets
from benchmarks.timing import interleaved_medians

PATTERN = "causal & window(255)"
HIDDEN, HEADS = contenders.HIDDEN, contenders.HEADS
WAYS = ("blockwise", "dense", "keras")


def _layers():
    """The three layers, sharing one set of weights."""
    return contenders.trio(PATTERN)


def _function(way, layers, length):
    """A traced forward pass of `way`, and its input."""
    blocks, dense, stock = layers
    x = tf.random.stateless_normal((1, length, HIDDEN), seed=(0, length))
    if way == "keras":
        mask = kd.parse_pattern(PATTERN).mask(length)
        run = tf.function(lambda x: stock(x, x, attention_mask=mask))
    else:
        layer = blocks if way == "blockwise" else dense
        run = tf.function(lambda x: layer(x, x))
    return run, x


def _rows(lengths, repeats, warmup):
    layers = _layers()
    rows = []
    for length in lengths:
        runs = {way: _function(way, layers, length) for way in WAYS}
        outputs = {way: run(x).numpy() for way, (run, x) in runs.items()}
        for way in ("dense", "keras"):
            np.testing.assert_allclose(
                outputs["blockwise"], outputs[way], atol=1e-4
            )
        medians = interleaved_medians(
            {
                way: (lambda run=run, x=x: run(x).numpy())
                for way, (run, x) in runs.items()
            },
            repeats,
            warmup,
        )
        peaks = {way: _peak_in_new_process(way, length) for way in WAYS}
        rows.append((length, medians, peaks))
    return rows


def _peak_in_new_process(way, length):
    return contenders.peak_in_new_process("benchmarks.scaling", way, length)


def _peak(way, length):
    """MiB by which one call at `length` raises the peak resident memory."""
    layers = _layers()

    def call(at):
        run, x = _function(way, layers, at)
        return run(x).numpy()

    return contenders.peak_rise(lambda: call(8), lambda: call(length))


def run(quick=False):
    lengths = (512, 4096) if quick else (128, 256, 512, 1024, 2048, 4096)
    repeats, warmup = (5, 1) if quick else (15, 3)
    lines = [
        f"### Attention scaling: {PATTERN}, B=1, hidden {HIDDEN}, {HEADS} "
        f"heads (median of {repeats} interleaved, {warmup} warm-up; peak "
        "memory in a fresh process each)",
        "",
        "| T | auto ms | dense ms | stock Keras ms | x dense speed | "
        "auto MiB | dense MiB | stock Keras MiB | x less memory |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length, medians, peaks in _rows(lengths, repeats, warmup):
        times = " | ".join(f"{medians[w] * 1e3:.1f}" for w in WAYS)
        memory = " | ".join(f"{peaks[w]:.0f}" for w in WAYS)
        saving = peaks["dense"] / max(peaks["blockwise"], 1.0)
        lines.append(
            f"| {length} | {times} | "
            f"{medians['dense'] / medians['blockwise']:.2f} | {memory} | "
            f"{saving:.1f} |"
        )
        if length == max(lengths):
            targets.record(
                f"{PATTERN}, T = {length}, blocks vs dense",
                f"{medians['blockwise'] * 1e3:.1f} ms, {peaks['blockwise']:.0f}"
                " MiB",
                f"{medians['dense'] * 1e3:.1f} ms, {peaks['dense']:.0f} MiB "
                f"({medians['dense'] / medians['blockwise']:.2f}x, "
                f"{saving:.1f}x memory)",
                ">= 6x",
            )
    lines.append("")
    lines.append(
        "Memory rises below 1 MiB are shown as 0 and counted as 1 MiB in "
        "the ratio."
    )
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3:
        kd.start_devices()
        print(json.dumps(_peak(sys.argv[1], int(sys.argv[2]))))
    else:
        print("\n".join(run(quick="--quick" in sys.argv)))
