"""A training step with masks built in the graph, against precomputed masks.

The same encoder (B = 32, T = 256, 4 blocks, hidden 256, 4 heads,
feed-forward 1024, vocabulary 1,000, a causal pattern and padding, rows of
128 to 256 tokens) trained on next-token targets, three ways:

- dynamic: `keras_dynmask` builds each block's mask from the ids and the
  pattern inside the graph (no mask input);
- static: the same layers fed a precomputed `(B, T, T)` mask tensor, built
  outside the model as most code does;
- keras-hub: a stack of `keras_hub.layers.TransformerEncoder` of the same
  sizes and activation (GELU, our blocks' default; keras-hub's default is
  ReLU, which alone made its step 9% faster) fed the same precomputed mask.

`train_on_batch` in graph mode; median of interleaved rounds after warm-up.
"""

import keras
import numpy as np

import keras_dynmask as kd
from benchmarks import targets
from benchmarks.timing import interleaved_medians

BATCH, LENGTH, LAYERS, HIDDEN, HEADS, FFN, VOCAB = (
    32,
    256,
    4,
    256,
    4,
    1024,
    1000,
)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, BATCH)
    ids = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    ids[np.arange(LENGTH)[None] >= lengths[:, None]] = 0
    real = ids != 0
    causal = np.tril(np.ones((LENGTH, LENGTH), bool))
    mask = causal[None] & real[:, None, :] & real[:, :, None]
    return ids, np.roll(ids, -1, axis=1), mask


def _head(x):
    return keras.layers.Dense(VOCAB)(x)


def _dynamic():
    ids = keras.Input((None,), dtype="int32")
    x = kd.TokenEmbedding(VOCAB, HIDDEN)(ids)
    for _ in range(LAYERS):
        x = kd.TransformerBlock(HEADS, FFN, pattern="causal")(x)
    return keras.Model(ids, _head(x))


def _static():
    ids = keras.Input((None,), dtype="int32")
    mask = keras.Input((None, None), dtype="bool")
    x = kd.TokenEmbedding(VOCAB, HIDDEN, pad_id=None)(ids)
    for _ in range(LAYERS):
        x = kd.TransformerBlock(HEADS, FFN)(x, attention_mask=mask)
    return keras.Model([ids, mask], _head(x))


def _keras_hub():
    from keras_hub.layers import TransformerEncoder

    ids = keras.Input((None,), dtype="int32")
    mask = keras.Input((None, None), dtype="bool")
    x = kd.TokenEmbedding(VOCAB, HIDDEN, pad_id=None)(ids)
    for _ in range(LAYERS):
        x = TransformerEncoder(
            FFN, HEADS, activation="gelu", normalize_first=True
        )(x, attention_mask=mask)
    return keras.Model([ids, mask], _head(x))


def run(quick=False):
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        return ["(keras-hub is not installed: pip install -e '.[bench]')"]
    repeats, warmup = (5, 2) if quick else (15, 3)
    ids, next_ids, mask = _data()
    weights = (ids != 0).astype("float32")
    contenders = {
        "keras_dynmask, masks built in the graph": (_dynamic(), ids),
        "keras_dynmask layers, precomputed mask input": (
            _static(),
            [ids, mask],
        ),
        "keras-hub TransformerEncoder, precomputed mask": (
            _keras_hub(),
            [ids, mask],
        ),
    }
    functions = {}
    for name, (model, inputs) in contenders.items():
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        functions[name] = lambda model=model, inputs=inputs: (
            model.train_on_batch(inputs, next_ids, sample_weight=weights)
        )
    medians = interleaved_medians(functions, repeats, warmup)
    base = medians["keras_dynmask, masks built in the graph"]
    lines = [
        f"### Training step, B={BATCH}, T={LENGTH}, {LAYERS} blocks, hidden "
        f"{HIDDEN} (median of {repeats} interleaved, {warmup} warm-up)",
        "",
        "| model | ms / step | x dynamic speed |",
        "|---|---:|---:|",
    ]
    for name, seconds in medians.items():
        lines.append(f"| {name} | {seconds * 1e3:.0f} | {base / seconds:.2f} |")
    hub = medians["keras-hub TransformerEncoder, precomputed mask"]
    targets.record(
        f"train step, {LAYERS} x {HIDDEN}, B = {BATCH}, T = {LENGTH}, vs "
        "keras-hub TransformerEncoder",
        f"{base * 1e3:.0f} ms",
        f"{hub * 1e3:.0f} ms ({base / hub:.2f}x its time)",
        "<= 1.00x its time",
    )
    return lines
