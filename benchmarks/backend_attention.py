"""Our attention against stock Keras on any backend and device.

`KERAS_BACKEND=jax python -m benchmarks.backend_attention [--quick]` (or
`torch`): one self-attention layer, ours and stock Keras
`MultiHeadAttention` with the same weights, forward pass compiled the
backend's way (`jax.jit`; eager PyTorch), on the backend's default device
(a GPU where there is one), in the global dtype policy's compute dtype
(`--policy mixed_bfloat16`). Three calls, each ours as a user writes it
beside stock Keras given the same mask:

- `causal`: ours `pattern="causal"`;
- `causal + padding`: the same with a key mask (a quarter of each row is
  padding);
- `padding`: bidirectional with that key mask.

Stock Keras gets the same mask as an `attention_mask` input (not
`use_causal_mask=True`, whose mask XLA constant-folds for minutes).

Every pair is checked to agree, then timed (median of interleaved rounds
after warm-up); the ratio is stock's time over ours (above 1: ours is
faster). The TensorFlow backend's figures are in `benchmarks/attention.py`
(this module does not import TensorFlow).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dynmask as kd  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402

CASES = (
    ("causal", "causal", False),
    ("causal + padding", "causal", True),
    ("padding", "bidirectional", True),
)


def _compiled(layer, call):
    """`call(layer, *args)` compiled the backend's way, returning a
    callable of `*args` that blocks until the result exists. Under JAX the
    weights are arguments of the compiled function (`stateless_call`), so
    that XLA does not fold them in as constants."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        weights = [v.value for v in layer.trainable_variables]
        others = [v.value for v in layer.non_trainable_variables]

        def pure(weights, others, *args):
            def stateless(*inputs, **kwargs):
                return layer.stateless_call(weights, others, *inputs, **kwargs)[
                    0
                ]

            return call(stateless, *args)

        compiled = jax.jit(pure)
        return lambda *args: compiled(
            weights, others, *args
        ).block_until_ready()
    if backend == "torch":
        import torch

        def run(*args):
            with torch.no_grad():
                out = call(layer, *args)
            if out.is_cuda:
                torch.cuda.synchronize()
            return out

        return run
    return lambda *args: keras.ops.convert_to_numpy(call(layer, *args))


def _pair(pattern, padded, batch, length, hidden, heads):
    """`{"ours": run, "stock": run}` on one input, checked to agree."""
    # Weights drawn by numpy: Keras' initializers under JAX on a GPU were
    # folded as constants by XLA for minutes at this size.
    ours = kd.MultiHeadAttention(
        heads, hidden // heads, pattern=pattern, kernel_initializer="zeros"
    )
    stock = keras.layers.MultiHeadAttention(
        heads, hidden // heads, kernel_initializer="zeros"
    )
    shape = (batch, length, hidden)
    ours.build(shape, shape)
    stock.build(shape, shape)
    rng = np.random.default_rng(length)
    weights = [
        rng.normal(scale=hidden**-0.5, size=w.shape).astype("float32")
        for w in ours.get_weights()
    ]
    ours.set_weights(weights)
    stock.set_weights(weights)
    x = keras.ops.cast(
        rng.normal(size=shape).astype("float32"), ours.compute_dtype
    )
    keys = np.ones((batch, length), bool)
    if padded:
        keys[:, length - length // 4 :] = False
    # Stock Keras gets its mask as an input, causal part included: with
    # `use_causal_mask=True` it builds the mask with a cumulative sum of
    # ones, which XLA spent minutes constant-folding at T = 4,096 on an
    # H200 (the kernel it then runs is the same).
    stock_mask = np.broadcast_to(keys[:, None, :], (batch, length, length))
    if pattern == "causal":
        stock_mask = stock_mask & np.tril(np.ones((length, length), bool))
    stock_mask = keras.ops.convert_to_tensor(stock_mask)
    keys = keras.ops.convert_to_tensor(keys)
    runs = {
        "stock": _compiled(stock, lambda f, x, m: f(x, x, attention_mask=m))
    }
    args = {"stock": (x, stock_mask)}
    if padded:
        runs["ours"] = _compiled(ours, lambda f, x, k: f(x, x, value_mask=k))
        args["ours"] = (x, keys)
    else:
        runs["ours"] = _compiled(ours, lambda f, x: f(x, x))
        args["ours"] = (x,)
    got, want = (
        keras.ops.convert_to_numpy(
            keras.ops.cast(runs[name](*args[name]), "float32")
        )
        for name in ("ours", "stock")
    )
    real = keras.ops.convert_to_numpy(keys)[..., None]
    half = keras.config.dtype_policy().compute_dtype != "float32"
    # Stock Keras gives padded queries an output too; ours zeros.
    np.testing.assert_allclose(
        got * real, want * real, atol=5e-2 if half else 2e-3
    )
    return {
        name: (lambda run=run, a=args[name]: run(*a))
        for name, run in runs.items()
    }


def run(quick=False, batch=4, hidden=1024, heads=16):
    lengths = (1024,) if quick else (1024, 4096)
    repeats, warmup = (10, 2) if quick else (50, 5)
    lines = [
        f"### Attention on {keras.backend.backend()} "
        f"({_device()}), {keras.config.dtype_policy().name}, B={batch}, "
        f"hidden {hidden}, {heads} heads (median of {repeats} interleaved, "
        f"{warmup} warm-up)",
        "",
        "| call | T | ours ms | stock Keras ms | x stock speed |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, pattern, padded in CASES:
        for length in lengths:
            pair = _pair(pattern, padded, batch, length, hidden, heads)
            ms = {
                way: seconds * 1e3
                for way, seconds in interleaved_medians(
                    pair, repeats, warmup
                ).items()
            }
            lines.append(
                f"| {name} | {length} | {ms['ours']:.2f} | "
                f"{ms['stock']:.2f} | {ms['stock'] / ms['ours']:.2f} |"
            )
    return lines


def _device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return "CPU"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backend_attention"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--policy", default="float32")
    args = parser.parse_args()
    keras.config.set_dtype_policy(args.policy)
    print("\n".join(run(quick=args.quick)))
