"""keras_dynmask: dynamic Transformer masks, built in the Keras graph.

Token masks ride on Keras mask propagation; attention masks are built from
patterns (`"causal & window(3)"`) each time attention is called, for every
batch's own lengths, padding and per-example inputs.

The package is in tiers, each a folder that uses only those below it:

- `core`: mask functions, patterns and their text, score modifiers,
  masked-LM rules;
- `attention`: masked softmax, block-wise windows, the key/value cache;
- `layers`: Keras layers over the core;
- `models`: builders, the masked-LM task, generation, schedules;
- `tf`: TensorFlow I/O (tf.data, the tokenizer, export);
- `app`: the `keras-dynmask` command and the main job.

Importing the package imports the library tiers (`core` to `models`), so
that every layer and model is registered with Keras and a `.keras` file
that holds them loads; they use Keras alone, so under Keras' JAX or
PyTorch backend no TensorFlow is imported (the library runs where it is
not installed). The `tf` and `app` tiers, and the modules `data`,
`tokenizer`, `export` and `viz`, load on first use. With
`KERAS_DYNMASK_LAZY=1` (the `keras-dynmask` command sets it) every name
loads on first use, so `import keras_dynmask` imports nothing else.
"""

import importlib
import os

__version__ = "0.1.0"

# Public name -> the module that defines it (or that is it).
_LAYERS = "keras_dynmask.layers"
_MASKS = "keras_dynmask.core.masks"
_PATTERNS = "keras_dynmask.core.patterns"
_SCORES = "keras_dynmask.core.scores"
_PUBLIC = {
    **dict.fromkeys(
        [
            "AttentionMask",
            "GroupedQueryAttention",
            "LengthMask",
            "MultiHeadAttention",
            "PaddingMask",
            "SinusoidalPositions",
            "SpanTokenMask",
            "TimeFrequencyMasking",
            "TokenEmbedding",
            "TokenMasking",
            "TransformerBlock",
            "TransformerDecoder",
            "TransformerEncoder",
        ],
        _LAYERS,
    ),
    **dict.fromkeys(
        [
            "backward_mask",
            "bidirectional_mask",
            "causal_mask",
            "length_mask",
            "merge_masks",
            "padding_mask",
            "prefix_mask",
            "segment_mask",
            "span_attention_mask",
            "span_token_mask",
            "window_mask",
        ],
        _MASKS,
    ),
    **dict.fromkeys(
        [
            "And",
            "Backward",
            "Bidirectional",
            "Causal",
            "Not",
            "Or",
            "Pattern",
            "Prefix",
            "Segment",
            "Span",
            "Window",
        ],
        _PATTERNS,
    ),
    **dict.fromkeys(
        [
            "ALiBi",
            "RelativeBias",
            "Score",
            "ScoreFunction",
            "SoftCap",
            "parse_scores",
        ],
        _SCORES,
    ),
    "MaskedLMMaskGenerator": "keras_dynmask.tf.masked_lm_generator",
    "get_keras_mask": "keras_dynmask.layers._keras_mask",
    "parse_pattern": "keras_dynmask.core.parsing",
    "start_devices": "keras_dynmask.tf.quiet",
}
# Public modules, by their short names.
_MODULES = {
    "data": "keras_dynmask.tf.data",
    "export": "keras_dynmask.tf.export",
    "generation": "keras_dynmask.models.generation",
    "masks": _MASKS,
    "models": "keras_dynmask.models",
    "patterns": _PATTERNS,
    "schedules": "keras_dynmask.models.schedules",
    "scores": _SCORES,
    "tokenizer": "keras_dynmask.tf.tokenizer",
    "viz": "keras_dynmask.app.viz",
}

__all__ = sorted([*_PUBLIC, *_MODULES])


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(
            f"module 'keras_dynmask' has no attribute {name!r}"
        )
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])


if not os.environ.get("KERAS_DYNMASK_LAZY"):
    # Registers every serializable class with Keras.
    importlib.import_module("keras_dynmask.models")
