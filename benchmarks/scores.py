"""What score modifiers cost: our attention with ALiBi, a soft cap or a
relative bias against the same attention without them, same weights, same
mask, in one run.

One self-attention layer (B = 1, hidden 256, 4 heads of 64), forward pass
in a `tf.function`, as it comes (`block_size=128`), on three masks that
take three paths: `causal` (queries in chunks), `causal & window(255)`
(block-wise at T = 4,096, dense at 512) and `bidirectional` over a row a
quarter padding (Keras' fused kernel). Every contender is checked against
the written-out softmax of its own modifiers. Reported: median
milliseconds of interleaved rounds after warm-up, and each modifier's time
over the plain layer's (the issue's target: at most 1.1x for ALiBi and
the soft cap). The same layers also run under XLA (`jit_compile=True`) in
the same rounds: there TensorFlow fuses the elementwise passes that cost a
modifier its time on the CPU's ops (Keras turns XLA on for `fit` and
`predict` on a GPU, not on a CPU).
"""

import sys

import numpy as np
import tensorflow as tf

import keras_dynmask as kd
from benchmarks import contenders
from benchmarks import targets
from benchmarks.timing import calls_at
from benchmarks.timing import interleaved_medians

HIDDEN, HEADS = contenders.HIDDEN, contenders.HEADS
MODIFIERS = ("alibi", "softcap(30)", "relative(32, 128, causal)")
PATTERNS = ("causal", "causal & window(255)", "bidirectional")


def _layers(pattern):
    """`{name: layer}`: plain and with each modifier, one set of weights
    (a relative bias table drawn at random, not its zeros)."""
    shape = (1, 8, HIDDEN)
    layers = {}
    for score in (None, *MODIFIERS):
        layer = kd.MultiHeadAttention(
            HEADS, HIDDEN // HEADS, pattern=pattern, score=score
        )
        layer.build(shape, shape)
        for table in layer.score_variables.values():
            table.assign(np.random.default_rng(0).normal(size=table.shape))
        layers[score or "plain"] = layer
    for layer in layers.values():
        for projection in ("query", "key", "value", "output"):
            name = f"_{projection}_dense"
            weights = getattr(layers["plain"], name).get_weights()
            getattr(layer, name).set_weights(weights)
    return layers


def _contenders(pattern, length, jit_compile=False):
    """`{name: callable}` for each layer at `length`, each checked to equal
    its own written-out softmax (`return_attention_scores=True`); under
    XLA with `jit_compile`."""
    x = tf.random.stateless_normal((1, length, HIDDEN), seed=(0, length))
    real = tf.range(length)[None] < (length * 3) // 4
    padding = (
        {"query_mask": real, "value_mask": real}
        if pattern == "bidirectional"
        else {}
    )
    runs = {}
    for name, layer in _layers(pattern).items():
        run = tf.function(
            lambda x, layer=layer: layer(x, x, **padding),
            jit_compile=jit_compile,
        )
        if length <= 1024:
            written, _ = layer(x, x, return_attention_scores=True, **padding)
            np.testing.assert_allclose(
                run(x).numpy(), written.numpy(), atol=1e-4
            )
        runs[name] = lambda run=run: run(x).numpy()
    return runs


def _row(pattern, length, ms, plain_cell=None):
    """A table row: `ms` by contender (`"plain"` and each modifier)."""
    cells = [
        plain_cell or f"{ms['plain']:.1f}",
        *(f"{ms[m]:.1f} ({ms[m] / ms['plain']:.2f}x)" for m in MODIFIERS),
    ]
    return f"| `{pattern}` | {length} | " + " | ".join(cells) + " |"


def run(quick=False):
    lengths = (512, 4096)
    repeats, warmup = (5, 1) if quick else (30, 3)
    header = [
        "| mask | T | plain ms | "
        + " | ".join(f"`{m}` ms (x plain)" for m in MODIFIERS)
        + " |",
        "|---|---:|---:|" + "---:|" * len(MODIFIERS),
    ]
    lines = [
        "### Score modifiers against the same attention without them, B=1, "
        f"hidden {HIDDEN}, {HEADS} heads (median of {repeats} interleaved "
        f"calls, {8 * repeats} at T = 512, {warmup} warm-up; x plain time: "
        "above 1 is slower)",
        "",
        *header,
    ]
    fused = [
        "",
        "### The same layers under XLA (`tf.function(jit_compile=True)`, "
        "what Keras' `fit` and `predict` use on a GPU; its elementwise "
        "passes fuse), timed in the same interleaved rounds as the table "
        "above; x plain under XLA, and plain under XLA against plain "
        "without it",
        "",
        header[0].replace("| plain ms |", "| plain ms (x without XLA) |"),
        header[1],
    ]
    for pattern in PATTERNS:
        for length in lengths:
            calls = calls_at(length, repeats)
            runs = _contenders(pattern, length)
            for name, call in _contenders(pattern, length, True).items():
                runs[f"{name}, XLA"] = call
            seconds = interleaved_medians(runs, calls, warmup)
            ms = {name: value * 1e3 for name, value in seconds.items()}
            lines.append(_row(pattern, length, ms))
            xla = {m: ms[f"{m}, XLA"] for m in ("plain", *MODIFIERS)}
            against = xla["plain"] / ms["plain"]
            fused.append(
                _row(
                    pattern,
                    length,
                    xla,
                    plain_cell=f"{xla['plain']:.1f} ({against:.2f}x)",
                )
            )
            if length == 4096:
                for modifier in MODIFIERS[:2]:
                    targets.record(
                        f"`{pattern}` with `{modifier}`, T = {length}, vs "
                        "without",
                        f"{ms[modifier]:.1f} ms",
                        f"{ms['plain']:.1f} ms "
                        f"({ms[modifier] / ms['plain']:.2f}x the time)",
                        "<= 1.1x",
                    )
    return lines + fused


if __name__ == "__main__":
    kd.start_devices()
    print("\n".join(run(quick="--quick" in sys.argv)))
