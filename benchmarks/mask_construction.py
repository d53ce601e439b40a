"""Building a composed attention mask: keras_dynmask against keras-hub.

The mask: padding & causal & window(64) & segment, for B = 32 and T in
{128, 512, 2048}, rows of random lengths and three packed documents each.
keras_dynmask builds it from the pattern text `"causal & window(64) &
segment"` and the padding mask; keras-hub has no window or segment masks,
so its side is `compute_causal_mask` and `merge_padding_and_attention_mask`
with the window and segment rules written out in `keras.ops` as a user
would (int32, combined with `minimum`, keras-hub's convention). Both are
checked to give the same mask. Every function runs in graph mode; median
of interleaved rounds. For T <= 512 the table also gives the mask's time as
a fraction of one dense `keras_dynmask.MultiHeadAttention` forward pass (4
heads, hidden 256, `block_size=None`) that builds and applies it; at
T = 2048 that pass needs more memory than a shared 2-core machine should
spend on a benchmark.
"""

import numpy as np
import tensorflow as tf
from keras import ops

import keras_dynmask as kd
from benchmarks.timing import interleaved_medians

BATCH, WINDOW, PATTERN = 32, 64, "causal & window(64) & segment"


def _inputs(length, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, BATCH)
    padding = np.arange(length)[None] < lengths[:, None]
    segments = np.sort(rng.integers(0, 3, (BATCH, length)), axis=1)
    return padding, segments.astype("int32")


def _hub(padding, segments):
    from keras_hub.src.layers.modeling.transformer_layer_utils import (
        compute_causal_mask,
    )
    from keras_hub.src.layers.modeling.transformer_layer_utils import (
        merge_padding_and_attention_mask,
    )

    length = ops.shape(padding)[1]
    causal = compute_causal_mask(BATCH, length, length)
    positions = ops.arange(length)
    distance = ops.expand_dims(positions, 1) - ops.expand_dims(positions, 0)
    window = ops.expand_dims(ops.abs(distance) <= WINDOW, 0)
    same = ops.expand_dims(segments, 2) == ops.expand_dims(segments, 1)
    rule = ops.minimum(
        ops.cast(causal, "int32"),
        ops.minimum(ops.cast(window, "int32"), ops.cast(same, "int32")),
    )
    queries = ops.minimum(rule, ops.cast(ops.expand_dims(padding, 2), "int32"))
    return merge_padding_and_attention_mask(None, padding, queries)


def _row(length, pattern, attention, repeats, warmup):
    """One table row: both builders (checked equal), and the forward."""
    padding, segments = _inputs(length)
    padding, segments = tf.constant(padding), tf.constant(segments)
    ours = tf.function(
        lambda p, s: kd.merge_masks(
            pattern.mask(tf.shape(p)[1], segment_ids=s), p, p
        )
    )
    hub = tf.function(_hub)
    np.testing.assert_array_equal(
        np.broadcast_to(
            ours(padding, segments).numpy(), (BATCH, length, length)
        ),
        hub(padding, segments).numpy().astype(bool),
    )
    functions = {
        "ours": lambda: ours(padding, segments).numpy(),
        "hub": lambda: hub(padding, segments).numpy(),
    }
    if length <= 512:
        x = tf.random.normal((BATCH, length, 256))
        forward = tf.function(
            lambda x, p, s: attention(
                x, x, query_mask=p, value_mask=p, segment_ids=s
            )
        )
        functions["forward"] = lambda: forward(x, padding, segments).numpy()
    medians = interleaved_medians(functions, repeats, warmup)
    share = "-"
    if "forward" in medians:
        share = f"{medians['ours'] / medians['forward']:.2f}"
    return (
        f"| {length} | {medians['ours'] * 1e3:.2f} | "
        f"{medians['hub'] * 1e3:.2f} | "
        f"{medians['hub'] / medians['ours']:.2f} | {share} |"
    )


def run(quick=False):
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        return ["(keras-hub is not installed: pip install -e '.[bench]')"]
    repeats, warmup = (10, 2) if quick else (30, 5)
    pattern = kd.parse_pattern(PATTERN)
    # The dense path: the full (B, T, T) mask is built and applied.
    attention = kd.MultiHeadAttention(4, 64, pattern=PATTERN, block_size=None)
    lines = [
        f"### Mask construction: padding & {PATTERN}, B={BATCH} (median of "
        f"{repeats} interleaved, {warmup} warm-up)",
        "",
        "| T | keras_dynmask ms | keras-hub + hand-written ms | "
        "x keras-hub speed | mask / attention forward |",
        "|---:|---:|---:|---:|---:|",
    ]
    for length in (128, 512) if quick else (128, 512, 2048):
        lines.append(_row(length, pattern, attention, repeats, warmup))
    return lines
