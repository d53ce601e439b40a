"""keras-hub's `TransformerEncoder` interface, with patterns and live masks.

`TransformerBlock` is this package's own block (its argument order, GELU
by default, a decoder mode, a key/value cache). `TransformerEncoder` is the
same computation behind keras-hub's interface: its arguments in its order
with its defaults, its call arguments, and its sublayers' names, so that
weights saved from a keras-hub `TransformerEncoder` load into it.
"""

import keras
from keras import ops

from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import score_config
from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers._keras_mask import without_mask
from keras_dynmask.layers.multi_head_attention import MultiHeadAttention

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class TransformerEncoder(keras.layers.Layer):
    """A Transformer encoder block with keras-hub's interface.

    Takes keras-hub's `TransformerEncoder` arguments, in its order and with
    its defaults, plus `pattern` (and `block_size`) for the self-attention.
    Unlike keras-hub's, the padding mask survives the block (and any stack
    of them), a padded query row's attention output is zero, and the
    pattern's per-example inputs may be given at call time. Weights saved
    from keras-hub's `TransformerEncoder` load into it (the same sublayers
    under the same names) and give the same outputs on real positions.

    Args:
        intermediate_dim: int > 0. Width of the feed-forward layer.
        num_heads: int > 0. Attention heads; each has `hidden_dim //
            num_heads` dimensions.
        dropout: float in `[0, 1)`. Defaults to `0`.
        activation: feed-forward activation. Defaults to `"relu"`.
        layer_norm_epsilon: float. Defaults to `1e-05`.
        kernel_initializer, bias_initializer: initializers. Default to
            `"glorot_uniform"` and `"zeros"`.
        normalize_first: bool. Pre-LN when `True`, post-LN (BERT's) when
            `False`. Defaults to `False`.
        pattern: `Pattern` or pattern text. Defaults to `"bidirectional"`.
        block_size: int or `None`, as for `MultiHeadAttention`.
        score: score modifiers for the self-attention, as for
            `MultiHeadAttention` (`"alibi"`, ...). Defaults to `None`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: `(B, T, hidden_dim)`.
        padding_mask: bool `(B, T)`. Defaults to the propagated mask.
        attention_mask: bool `(B, T, T)` (or `(T, T)`), ANDed in.
        training: bool.
        return_attention_scores: bool. Also return the weights `(B,
            num_heads, T, T)`.
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: what the pattern reads per example.

    Example:

    >>> import numpy as np, keras, keras_dynmask
    >>> x = keras.layers.Embedding(10, 8, mask_zero=True)(np.array([[3, 4, 0]]))
    >>> y = keras_dynmask.TransformerEncoder(16, 2, pattern="causal")(x)
    >>> y.shape, keras_dynmask.get_keras_mask(y).numpy().tolist()
    (TensorShape([1, 3, 8]), [[True, True, False]])
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0,
        activation="relu",
        layer_norm_epsilon=1e-05,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        normalize_first=False,
        pattern="bidirectional",
        block_size=128,
        score=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.intermediate_dim = check_int(
            "intermediate_dim", intermediate_dim, minimum=1
        )
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.dropout = check_fraction("dropout", dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.normalize_first = bool(normalize_first)
        self.pattern = as_pattern(pattern)
        if block_size is not None:
            block_size = check_int("block_size", block_size, minimum=1)
        self.block_size = block_size
        self.score = as_scores(score)

    # keras-hub's name for the self-attention sublayer.
    _self_attention_name = "self_attention_layer"

    def _initializers(self):
        """Fresh initializers for one sublayer (never shared: a shared
        stateless initializer would give equal weights)."""
        return {
            "kernel_initializer": keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            "bias_initializer": keras.initializers.get(
                keras.initializers.serialize(self.bias_initializer)
            ),
        }

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        key_dim = hidden_dim // self.num_heads
        if key_dim == 0:
            raise ValueError(
                f"num_heads={self.num_heads} is more than the hidden size "
                f"{hidden_dim}, so a head would have no dimension"
            )
        self._self_attention_layer = MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.dropout,
            pattern=self.pattern,
            block_size=self.block_size,
            score=self.score,
            dtype=self.dtype_policy,
            name=self._self_attention_name,
            **self._initializers(),
        )
        self._self_attention_layer.build(inputs_shape, inputs_shape)
        self._self_attention_layer_norm = self._norm(
            "self_attention_layer_norm", inputs_shape
        )
        self._self_attention_dropout = keras.layers.Dropout(
            self.dropout,
            dtype=self.dtype_policy,
            name="self_attention_dropout",
        )
        self._feedforward_layer_norm = self._norm(
            "feedforward_layer_norm", inputs_shape
        )
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            dtype=self.dtype_policy,
            name="feedforward_intermediate_dense",
            **self._initializers(),
        )
        self._feedforward_intermediate_dense.build(inputs_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            hidden_dim,
            dtype=self.dtype_policy,
            name="feedforward_output_dense",
            **self._initializers(),
        )
        self._feedforward_output_dense.build(
            (*inputs_shape[:-1], self.intermediate_dim)
        )
        self._feedforward_dropout = keras.layers.Dropout(
            self.dropout,
            dtype=self.dtype_policy,
            name="feedforward_dropout",
        )

    def _norm(self, name, shape):
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        norm.build(shape)
        return norm

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        mask=None,
    ):
        padding = mask if padding_mask is None else padding_mask
        if padding is not None:
            padding = ops.cast(padding, "bool")
        x = without_mask(inputs)
        scores = []

        def self_attention(x):
            outputs = self._self_attention_layer(
                x,
                x,
                query_mask=padding,
                value_mask=padding,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                training=training,
                segment_ids=segment_ids,
                key_segment_ids=key_segment_ids,
                prefix_length=prefix_length,
                span_length=span_length,
                span_position=span_position,
            )
            if return_attention_scores:
                outputs, weights = outputs
                scores.append(weights)
            return outputs

        x = self._residual(
            x,
            self._self_attention_layer_norm,
            self_attention,
            self._self_attention_dropout,
            training,
        )
        x = self._residual(
            x,
            self._feedforward_layer_norm,
            self._feedforward,
            self._feedforward_dropout,
            training,
        )
        if padding is not None:
            set_keras_mask(x, padding)
        return (x, scores[0]) if return_attention_scores else x

    def _feedforward(self, x):
        return self._feedforward_output_dense(
            self._feedforward_intermediate_dense(x)
        )

    def _residual(self, x, norm, transform, dropout, training):
        """`x + transform(norm(x))` (pre-LN) or `norm(x + transform(x))`."""
        inner = norm(x) if self.normalize_first else x
        x = x + dropout(transform(inner), training=training)
        return x if self.normalize_first else norm(x)

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "intermediate_dim": self.intermediate_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "normalize_first": self.normalize_first,
            "pattern": str(self.pattern),
            "block_size": self.block_size,
            "score": score_config(self.score),
        }
