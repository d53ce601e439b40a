"""Multi-head attention that builds its mask from a pattern at call time."""

import math

import keras
from keras import ops

from keras_dynmask._checks import check_fraction
from keras_dynmask._checks import check_int
from keras_dynmask._keras_mask import set_keras_mask
from keras_dynmask._keras_mask import without_mask
from keras_dynmask.layers.attention_mask import call_attention_mask
from keras_dynmask.layers.attention_mask import pattern_variables
from keras_dynmask.parsing import as_pattern

_register = keras.saving.register_keras_serializable(package="keras_dynmask")

# Softmax runs in float32 whatever the compute dtype, so this stays finite
# (a -1e9 cast to float16 would be -inf, then NaN).
_MASKED_SCORE = -1e9


@_register
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose mask is rebuilt for every batch.

    A drop-in for `keras.layers.MultiHeadAttention` that takes a `pattern`
    (`"causal"`, `"causal & window(3)"`, `"segment"`, ...) and combines it
    with the propagated query and key padding masks into a `(B, T, S)`
    boolean mask each time it is called. It never clears or changes the
    masks of its inputs, so residual connections keep their mask.

    The pattern's int parameters live in the non-trainable variables of
    `pattern_variables` (`{"window_0_left": ..., "window_0_right": ...}`),
    which a callback may change during training without retracing.

    A query row with no visible key (a padding position, or a pattern that
    hides every key) returns zeros: its attention weights are set to zero
    after the softmax, and its output row is zero. Scores are normalized in
    float32, so the layer is safe under `mixed_float16` and `mixed_bfloat16`.

    Masking: reads `query_mask` and `value_mask` (or `key_mask`) from the
    propagated masks; the output carries the query mask `(B, T)` onward.

    Args:
        num_heads: int > 0. Number of attention heads.
        key_dim: int > 0. Size of each head for query and key.
        value_dim: int > 0. Size of each head for value. Defaults to
            `key_dim`.
        dropout: float in `[0, 1)`. Dropout on attention weights. Defaults
            to `0.0`.
        use_bias: bool. Whether the projections have biases. Defaults to
            `True`.
        pattern: `Pattern` or pattern text. Defaults to `"bidirectional"`.
        kernel_initializer: initializer for projection kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer for projection biases. Defaults to
            `"zeros"`.
        **kwargs: base layer arguments.

    Call arguments:
        query: tensor `(B, T, D)`.
        value: tensor `(B, S, Dv)`.
        key: tensor `(B, S, Dk)`. Defaults to `value`.
        query_mask, value_mask, key_mask: bool `(B, T)` / `(B, S)`; filled
            from the propagated masks when not given.
        attention_mask: bool `(B, T, S)`, ANDed with everything else.
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: per-example inputs the pattern reads.
        offset: int or int tensor `(B,)`. Absolute position of query 0 (for
            decoding with a cache). Defaults to `0`.
        training: bool. Enables dropout.
        return_attention_scores: bool. Also return the weights.

    Returns:
        `(B, T, D)`, and the weights `(B, num_heads, T, S)` when asked.

    Example:

    >>> import numpy as np, keras, keras_dynmask
    >>> ids = np.array([[3, 4, 0, 0]])
    >>> x = keras.layers.Embedding(5, 8, mask_zero=True)(ids)
    >>> mha = keras_dynmask.MultiHeadAttention(2, 4, pattern="causal")
    >>> y, w = mha(x, x, return_attention_scores=True)
    >>> w.shape
    TensorShape([1, 2, 4, 4])
    >>> keras_dynmask.get_keras_mask(y).numpy()
    array([[ True,  True, False, False]])
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        pattern="bidirectional",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.key_dim = check_int("key_dim", key_dim, minimum=1)
        self.value_dim = check_int(
            "value_dim", key_dim if value_dim is None else value_dim, minimum=1
        )
        self.dropout = check_fraction("dropout", dropout)
        self.use_bias = bool(use_bias)
        self.pattern = as_pattern(pattern)
        self.pattern_variables, self._by_leaf = pattern_variables(
            self, self.pattern
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )

    def _projection(self, name, equation, output_shape, bias_axes):
        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            bias_initializer=keras.initializers.get(
                keras.initializers.serialize(self.bias_initializer)
            ),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        heads = self.num_heads
        self._query_dense = self._projection(
            "query", "btd,dnh->btnh", (None, heads, self.key_dim), "nh"
        )
        self._key_dense = self._projection(
            "key", "bsd,dnh->bsnh", (None, heads, self.key_dim), "nh"
        )
        self._value_dense = self._projection(
            "value", "bsd,dnh->bsnh", (None, heads, self.value_dim), "nh"
        )
        self._output_dense = self._projection(
            "attention_output", "btnh,nhd->btd", (None, query_shape[-1]), "d"
        )
        self._query_dense.build(query_shape)
        self._key_dense.build(key_shape)
        self._value_dense.build(value_shape)
        self._output_dense.build(
            (query_shape[0], query_shape[1], heads, self.value_dim)
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        offset=0,
        training=None,
        return_attention_scores=False,
    ):
        key = value if key is None else key
        key_mask = value_mask if key_mask is None else key_mask
        mask = call_attention_mask(
            self.pattern,
            query,
            key,
            query_mask,
            key_mask,
            offset,
            variables=self._by_leaf,
            segment_ids=segment_ids,
            key_segment_ids=key_segment_ids,
            prefix_length=prefix_length,
            span_length=span_length,
            span_position=span_position,
        )
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            mask = (
                attention_mask
                if mask is None
                else ops.logical_and(mask, attention_mask)
            )

        # The mask is applied here; the projections need not see it.
        query_heads = self._query_dense(without_mask(query))
        key_heads = self._key_dense(without_mask(key))
        value_heads = self._value_dense(without_mask(value))
        query_heads = query_heads * ops.cast(
            1.0 / math.sqrt(self.key_dim), query_heads.dtype
        )
        # (B, N, T, S), normalized in float32 for every compute dtype.
        scores = ops.cast(
            ops.einsum("bsnh,btnh->bnts", key_heads, query_heads), "float32"
        )
        if mask is not None:
            head_mask = ops.expand_dims(mask, 1)
            scores = ops.where(head_mask, scores, _MASKED_SCORE)
        if scores.shape[-1] == 1:
            # One key: its weight is 1 (Keras warns on a softmax of size 1).
            weights = ops.ones_like(scores)
        else:
            weights = ops.softmax(scores, axis=-1)
        if mask is not None:
            # A row whose keys are all hidden would otherwise be uniform.
            weights = ops.where(head_mask, weights, 0.0)
        weights = ops.cast(weights, self.compute_dtype)
        dropped = self._dropout_layer(weights, training=training)
        attended = ops.einsum("bnts,bsnh->btnh", dropped, value_heads)
        output = self._output_dense(attended)
        if mask is not None:
            has_key = ops.expand_dims(ops.any(mask, axis=-1), -1)
            output = ops.where(has_key, output, ops.zeros_like(output))
        if query_mask is not None:
            set_keras_mask(output, ops.cast(query_mask, "bool"))
        if return_attention_scores:
            return output, weights
        return output

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return query_shape

    def compute_output_spec(self, query, value, key=None, **kwargs):
        key = value if key is None else key
        output = keras.KerasTensor(query.shape, dtype=self.compute_dtype)
        if kwargs.get("return_attention_scores"):
            weights = keras.KerasTensor(
                (query.shape[0], self.num_heads, query.shape[1], key.shape[1]),
                dtype=self.compute_dtype,
            )
            return output, weights
        return output

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "pattern": str(self.pattern),
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
        }
