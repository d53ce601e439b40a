"""keras_dynmask: dynamic Transformer masks, built in the Keras graph.

Token masks ride on Keras mask propagation; attention masks are built from
patterns (`"causal & window(3)"`) each time attention is called, for every
batch's own lengths, padding and per-example inputs.
"""

from keras_dynmask import _quiet

_quiet.import_tensorflow()

from keras_dynmask import generation  # noqa: E402
from keras_dynmask import models  # noqa: E402
from keras_dynmask import schedules  # noqa: E402
from keras_dynmask._keras_mask import get_keras_mask  # noqa: E402
from keras_dynmask._quiet import start_devices  # noqa: E402
from keras_dynmask.layers import AttentionMask  # noqa: E402
from keras_dynmask.layers import LengthMask  # noqa: E402
from keras_dynmask.layers import MultiHeadAttention  # noqa: E402
from keras_dynmask.layers import PaddingMask  # noqa: E402
from keras_dynmask.layers import SinusoidalPositions  # noqa: E402
from keras_dynmask.layers import SpanMask  # noqa: E402
from keras_dynmask.layers import TimeFrequencyMasking  # noqa: E402
from keras_dynmask.layers import TokenEmbedding  # noqa: E402
from keras_dynmask.layers import TokenMasking  # noqa: E402
from keras_dynmask.layers import TransformerBlock  # noqa: E402
from keras_dynmask.masks import backward_mask  # noqa: E402
from keras_dynmask.masks import bidirectional_mask  # noqa: E402
from keras_dynmask.masks import causal_mask  # noqa: E402
from keras_dynmask.masks import length_mask  # noqa: E402
from keras_dynmask.masks import merge_masks  # noqa: E402
from keras_dynmask.masks import padding_mask  # noqa: E402
from keras_dynmask.masks import prefix_mask  # noqa: E402
from keras_dynmask.masks import segment_mask  # noqa: E402
from keras_dynmask.masks import span_mask  # noqa: E402
from keras_dynmask.masks import span_token_mask  # noqa: E402
from keras_dynmask.masks import window_mask  # noqa: E402
from keras_dynmask.parsing import parse_pattern  # noqa: E402
from keras_dynmask.patterns import And  # noqa: E402
from keras_dynmask.patterns import Backward  # noqa: E402
from keras_dynmask.patterns import Bidirectional  # noqa: E402
from keras_dynmask.patterns import Causal  # noqa: E402
from keras_dynmask.patterns import Not  # noqa: E402
from keras_dynmask.patterns import Or  # noqa: E402
from keras_dynmask.patterns import Pattern  # noqa: E402
from keras_dynmask.patterns import Prefix  # noqa: E402
from keras_dynmask.patterns import Segment  # noqa: E402
from keras_dynmask.patterns import Span  # noqa: E402
from keras_dynmask.patterns import Window  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "And",
    "AttentionMask",
    "Backward",
    "Bidirectional",
    "Causal",
    "LengthMask",
    "MultiHeadAttention",
    "Not",
    "Or",
    "PaddingMask",
    "Pattern",
    "Prefix",
    "Segment",
    "SinusoidalPositions",
    "Span",
    "SpanMask",
    "TimeFrequencyMasking",
    "TokenEmbedding",
    "TokenMasking",
    "TransformerBlock",
    "Window",
    "backward_mask",
    "bidirectional_mask",
    "causal_mask",
    "generation",
    "get_keras_mask",
    "length_mask",
    "merge_masks",
    "models",
    "padding_mask",
    "parse_pattern",
    "prefix_mask",
    "schedules",
    "segment_mask",
    "span_mask",
    "span_token_mask",
    "start_devices",
    "window_mask",
]
