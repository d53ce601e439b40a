"""Our attention against stock Keras `MultiHeadAttention` on the same mask.

One self-attention layer (B = 1, hidden 256, 4 heads of 64), the same
weights in every contender, forward pass in a `tf.function`, four masks:

- `causal & window(255)`, which stock Keras gets precomputed (a constant
  of the graph);
- `causal`: stock Keras with `use_causal_mask=True`;
- 8 packed documents of T / 8 tokens in one row, `segment & causal` with
  segment ids, which stock Keras gets precomputed;
- a prefix-LM, `causal | prefix` with a prefix of T / 8, over a row whose
  last three quarters are padding at T = 4,096 (none at T = 512), which
  stock Keras gets precomputed with the padding.

Ours runs twice: as it comes ("auto": block-wise for the window at
T = 4,096, block-sparse tiles for the packed documents and the padded
prefix-LM, queries in chunks for `causal`) and dense (`block_size=None`,
one `(T, T)` mask built in the graph). Every contender is checked to
give the same output. Reported: median milliseconds of interleaved
rounds after warm-up, and the ratios
(above 1: ours is faster); at T = 4,096 also how far one call raises the
peak resident memory, each way in a fresh process
(`python -m benchmarks.attention PATTERN WAY LENGTH` prints one).
"""

import json
import sys

import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import contenders
from benchmarks import targets
from benchmarks.timing import interleaved_medians

HIDDEN, HEADS, DOCUMENTS = contenders.HIDDEN, contenders.HEADS, 8


def _runs(pattern, length, layers=None, ways=("auto", "dense", "stock")):
    """`({name: traced call}, x)` for ours (auto and dense) and stock
    Keras at `length`, or only `ways` of them (stock Keras' mask, built
    eagerly, is then not built for ours: a memory measurement of ours
    would count it)."""
    auto, dense, stock = layers or contenders.trio(pattern)
    x = tf.random.stateless_normal((1, length, HIDDEN), seed=(0, length))
    inputs = {}
    if "segment" in pattern:
        segments = tf.range(length)[None] // max(1, length // DOCUMENTS)
        inputs["segment_ids"] = segments
    padding = {}
    if "prefix" in pattern:
        inputs["prefix_length"] = tf.constant([length // 8])
        real = tf.range(length)[None] < _real(length)
        padding = {"query_mask": real, "value_mask": real}
    runs = {
        "auto": lambda: tf.function(lambda x: auto(x, x, **inputs, **padding)),
        "dense": lambda: tf.function(
            lambda x: dense(x, x, **inputs, **padding)
        ),
    }
    if pattern == "causal":
        runs["stock"] = lambda: tf.function(
            lambda x: stock(x, x, use_causal_mask=True)
        )
    else:

        def given_mask():
            mask = kd.merge_masks(
                kd.parse_pattern(pattern).mask(length, **inputs),
                padding.get("query_mask"),
                padding.get("value_mask"),
            )
            return tf.function(lambda x: stock(x, x, attention_mask=mask))

        runs["stock"] = given_mask
    return {way: runs[way]() for way in ways}, x


def _real(length):
    """How many tokens are not padding in the padded row: a quarter."""
    return length // 4 if length >= 1024 else length


def _contenders(pattern, length):
    """`{name: callable}` for ours (auto and dense) and stock Keras,
    checked to agree (on the positions that are not padding: stock Keras
    gives padding queries outputs too)."""
    runs, x = _runs(pattern, length)
    real = _real(length) if "prefix" in pattern else length
    want = runs["stock"](x).numpy()[:, :real]
    for run in runs.values():
        np.testing.assert_allclose(run(x).numpy()[:, :real], want, atol=1e-4)
    return {
        name: (lambda run=run: run(x).numpy()) for name, run in runs.items()
    }


def _peak(pattern, way, length):
    """MiB by which one call of `way` at `length` raises the peak resident
    memory (after the same call at length 8)."""
    layers = contenders.trio(pattern)

    def call(at):
        runs, x = _runs(pattern, at, layers, ways=(way,))
        return runs[way](x).numpy()

    return contenders.peak_rise(lambda: call(8), lambda: call(length))


CASES = (
    # (name, pattern, what stock Keras gets)
    ("window", "causal & window(255)", "the mask, precomputed"),
    ("causal", "causal", "use_causal_mask=True"),
    (
        f"{DOCUMENTS} packed documents",
        "segment & causal",
        "the mask, precomputed",
    ),
    # Block-sparse beyond segments: a prefix of T / 8, and from T = 1,024
    # the row three quarters padding.
    ("padded prefix-LM", "causal | prefix", "the mask, precomputed"),
)


def run(quick=False):
    lengths = (512, 4096)
    repeats, warmup = (5, 1) if quick else (15, 3)
    lines = [
        f"### Attention against stock Keras MultiHeadAttention, B=1, hidden "
        f"{HIDDEN}, {HEADS} heads (median of {repeats} interleaved, {warmup} "
        "warm-up; peak memory at T = 4,096 in a fresh process each)",
        "",
        "| mask | T | stock Keras gets | auto ms | dense ms | stock Keras ms "
        "| x stock speed (auto) | x stock speed (dense) | x dense speed "
        "(auto) | auto / dense / stock MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, pattern, given in CASES:
        for length in lengths:
            ms = {
                way: seconds * 1e3
                for way, seconds in interleaved_medians(
                    _contenders(pattern, length), repeats, warmup
                ).items()
            }
            mib = {}
            if length == 4096:
                mib = {
                    way: contenders.peak_in_new_process(
                        "benchmarks.attention", pattern, way, length
                    )
                    for way in ("auto", "dense", "stock")
                }
            memory = " / ".join(f"{mib[w]:.0f}" for w in mib) or "-"
            lines.append(
                f"| {name} (`{_cell(pattern)}`) | {length} | {given} | "
                f"{ms['auto']:.1f} | {ms['dense']:.1f} | {ms['stock']:.1f} | "
                f"{ms['stock'] / ms['auto']:.2f} | "
                f"{ms['stock'] / ms['dense']:.2f} | "
                f"{ms['dense'] / ms['auto']:.2f} | {memory} |"
            )
            _record(name, length, given, ms, mib)
    return lines


def _cell(text):
    """`text` for a markdown table cell (a `|` would end the cell)."""
    return text.replace("|", "\\|")


def _record(name, length, given, ms, mib):
    """The issue's target rows this table holds."""
    if name == "window":
        targets.record(
            f"dense attention, T = {length}, vs stock Keras MHA ({given})",
            f"{ms['dense']:.1f} ms",
            f"{ms['stock']:.1f} ms ({ms['stock'] / ms['dense']:.2f}x)",
            ">= 1.00x",
        )
    elif name == "causal" and length == 4096:
        targets.record(
            f"causal attention, T = {length}, vs stock Keras MHA ({given})",
            f"{ms['auto']:.1f} ms",
            f"{ms['stock']:.1f} ms ({ms['stock'] / ms['auto']:.2f}x)",
            ">= 1.8x",
        )
    elif length == 4096 and name != "padded prefix-LM":
        less = mib["dense"] / max(mib["auto"], 1.0)
        targets.record(
            f"{name} (`segment & causal`), T = {length}, vs our dense",
            f"{ms['auto']:.1f} ms, {mib['auto']:.0f} MiB",
            f"{ms['dense']:.1f} ms, {mib['dense']:.0f} MiB "
            f"({ms['dense'] / ms['auto']:.2f}x, {less:.1f}x memory)",
            ">= 4x, >= 4x less memory",
        )


if __name__ == "__main__":
    kd.start_devices()
    if len(sys.argv) == 4:
        print(json.dumps(_peak(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
    else:
        print("\n".join(run(quick="--quick" in sys.argv)))
