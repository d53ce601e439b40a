"""Multi-head attention that builds its mask from a pattern at call time."""

import math

import keras
from keras import ops

from keras_dynmask.attention import blockwise
from keras_dynmask.attention.cache import write_cache
from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers._keras_mask import without_mask
from keras_dynmask.layers.attention_mask import call_attention_mask
from keras_dynmask.layers.attention_mask import pattern_variables

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


def _given_mask(attention_mask):
    """A caller's `attention_mask` as bool `(B|1, T, S)`."""
    given = ops.cast(attention_mask, "bool")
    if len(given.shape) == 2:  # (T, S): one mask for every example
        return ops.expand_dims(given, 0)
    if len(given.shape) != 3:
        raise ValueError(
            "attention_mask must have shape (T, S) or (B, T, S), received "
            f"shape {tuple(attention_mask.shape)}"
        )
    return given


class _CallMasks:
    """What decides one call's `(B, T, S)` mask: the queries and keys, their
    token masks, the offset, a given mask and the per-example inputs."""

    def __init__(
        self,
        layer,
        query,
        key,
        query_mask,
        key_mask,
        offset,
        attention_mask,
        inputs,
    ):
        self.layer = layer
        self.query, self.key = query, key
        self.query_mask, self.key_mask = query_mask, key_mask
        self.offset = offset
        self.attention_mask = attention_mask
        self.inputs = {k: v for k, v in inputs.items() if v is not None}

    def dense(self):
        """bool `(B|1, T, S)`, or `None` when nothing is masked."""
        mask = call_attention_mask(
            self.layer.pattern,
            self.query,
            self.key,
            self.query_mask,
            self.key_mask,
            self.offset,
            variables=self.layer.pattern_variables,
            **self.inputs,
        )
        if self.attention_mask is None:
            return mask
        given = _given_mask(self.attention_mask)
        return given if mask is None else ops.logical_and(mask, given)


@_register
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose mask is rebuilt for every batch.

    A drop-in for `keras.layers.MultiHeadAttention` that takes a `pattern`
    (`"causal"`, `"causal & window(3)"`, `"segment"`, ...) and combines it
    with the propagated query and key padding masks into a `(B, T, S)`
    boolean mask each time it is called. It never clears or changes the
    masks of its inputs, so residual connections keep their mask.

    The pattern's int parameters live in the non-trainable variables of
    `pattern_variables`, named after their word (`{"window_3_left": ...,
    "window_3_right": ...}` for `window(3)`, `"local_left"` for
    `window(3, name=local)`), which a callback may change during training
    without retracing.

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
        block_size: int > 0 or `None`. For window patterns (alone or with
            causal, backward, segment and padding masks) in self-attention,
            attention is computed in blocks of this many queries over only
            the key blocks the window reaches
            (`keras_dynmask.attention.blockwise`), whenever that is at most
            half the sequence: time and
            memory grow with `T x window`, not `T x T`, and the results
            equal the dense path's. On the TensorFlow backend; `None` always
            uses the dense path. Defaults to `128`.
        **kwargs: base layer arguments.

    Call arguments:
        query: tensor `(B, T, D)`.
        value: tensor `(B, S, Dv)`.
        key: tensor `(B, S, Dk)`. Defaults to `value`.
        query_mask, value_mask, key_mask: bool `(B, T)` / `(B, S)`; filled
            from the propagated masks when not given.
        attention_mask: bool `(B, T, S)` or `(T, S)` (the same for every
            example), ANDed with everything else.
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: per-example inputs the pattern reads.
        offset: int or int tensor `(B,)`. Absolute position of query 0.
            Defaults to `0`.
        cache: optional tensor `(B, 2, S, num_heads, key_dim)`, the keys
            and values of earlier positions (zeros where none yet), for
            decoding one step at a time. The new keys and values are
            written into it at `cache_index`, the queries attend to all
            `S` cached positions under the pattern, and the updated cache
            is returned. Needs `key_dim == value_dim`.
        cache_index: int or int tensor `(B,)`. Absolute position of query
            0, required with `cache` (each row may be at its own position;
            `0` for a prompt written from the start); it is the pattern's
            offset. With a cache, `value_mask` (the new
            tokens') is not a key mask; `key_mask`, if given, covers the
            `S` cached positions. Defaults to `0`.
        training: bool. Enables dropout.
        return_attention_scores: bool. Also return the weights.

    Returns:
        `(B, T, D)`, then the weights `(B, num_heads, T, S)` when asked,
        then the updated cache when `cache` is given.

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
        block_size=128,
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
        self.pattern_variables = pattern_variables(self, self.pattern)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if block_size is not None:
            block_size = check_int("block_size", block_size, minimum=1)
        self.block_size = block_size
        self._blockwise = block_size is not None and blockwise.supports(
            self.pattern
        )
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
        cache=None,
        cache_index=None,
        training=None,
        return_attention_scores=False,
    ):
        key = value if key is None else key
        if cache is None:
            key_mask = value_mask if key_mask is None else key_mask
            if cache_index is not None:
                raise ValueError(
                    "cache_index places new keys in a cache: pass cache= "
                    f"too, received cache_index={cache_index!r}, cache=None"
                )
        # The mask is applied below; the projections need not see it.
        query_heads = self._query_dense(without_mask(query))
        key_heads = self._key_dense(without_mask(key))
        value_heads = self._value_dense(without_mask(value))
        if cache is not None:
            cache = self._updated_cache(
                cache, cache_index, offset, key_heads, value_heads
            )
            key_heads, value_heads = cache[:, 0], cache[:, 1]
            key, offset = key_heads, cache_index
        query_heads = query_heads * ops.cast(
            1.0 / math.sqrt(self.key_dim), query_heads.dtype
        )
        masks = _CallMasks(
            self,
            query,
            key,
            query_mask,
            key_mask,
            offset,
            attention_mask,
            {
                "segment_ids": segment_ids,
                "key_segment_ids": key_segment_ids,
                "prefix_length": prefix_length,
                "span_length": span_length,
                "span_position": span_position,
            },
        )
        heads = (query_heads, key_heads, value_heads)

        def dropout(weights):
            return self._dropout_layer(weights, training=training)

        weights = None
        if not return_attention_scores and self._takes_blocks(
            value, cache, masks
        ):
            attended, has_key = self._blocks_or_dense(heads, masks, dropout)
        else:
            attended, has_key, weights = softmax_attention(
                *heads, masks.dense(), dropout
            )
        output = self._output_dense(attended)
        if has_key is not None:
            # A query that sees no key outputs zeros, not the bias.
            has_key = ops.expand_dims(has_key, -1)
            output = ops.where(has_key, output, ops.zeros_like(output))
        if query_mask is not None:
            set_keras_mask(output, ops.cast(query_mask, "bool"))
        outputs = (output,)
        if return_attention_scores:
            outputs += (weights,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _updated_cache(
        self, cache, cache_index, offset, key_heads, value_heads
    ):
        """The cache with this call's keys and values written in."""
        cache = self._check_cache(cache, cache_index, offset)
        return ops.stack(
            [
                write_cache(cache[:, 0], key_heads, cache_index),
                write_cache(cache[:, 1], value_heads, cache_index),
            ],
            axis=1,
        )

    def _blocks_or_dense(self, heads, masks, dropout):
        """`(attended, has_key)` block by block when the window reaches at
        most half the sequence (decided in the graph, for this call's
        length), else by the dense path."""

        def blocks():
            return blockwise.attention(
                *heads,
                self.pattern,
                self.block_size,
                variables=self.pattern_variables,
                query_mask=masks.query_mask,
                key_mask=masks.key_mask,
                segment_ids=masks.inputs.get("segment_ids"),
                dropout=dropout,
            )

        def dense():
            attended, has_key, _ = softmax_attention(
                *heads, masks.dense(), dropout
            )
            if has_key is None:
                has_key = ops.ones(ops.shape(attended)[:2], "bool")
            return attended, has_key

        before, after = blockwise.key_blocks(
            self.pattern, self.pattern_variables, self.block_size
        )
        # Blocks pay once each query block reads at most half the sequence
        # (window 256, blocks of 128: 0.92x dense's speed at T = 512, where
        # they read 3/4 of it; 1.26x at T = 768; 5x at T = 4096;
        # benchmarks/scaling.py).
        length = ops.shape(masks.query)[1]
        fewer_keys = ops.logical_and(
            ops.less_equal(2 * (before + after + 1) * self.block_size, length),
            ops.equal(length, ops.shape(masks.key)[1]),
        )
        return ops.cond(fewer_keys, blocks, dense)

    def _takes_blocks(self, value, cache, masks):
        """Whether this call may use block-wise attention: a window
        pattern, queries and keys at the same positions (offset 0, lengths
        not known to differ), nothing that needs a dense `(B, T, S)` mask,
        on a backend with run-time shapes."""
        lengths = {
            masks.query.shape[1],
            masks.key.shape[1],
            value.shape[1],
        } - {None}
        return (
            self._blockwise
            and blockwise.available()
            and cache is None
            and masks.attention_mask is None
            and masks.inputs.get("key_segment_ids") is None
            and isinstance(masks.offset, int)
            and masks.offset == 0
            and len(lengths) <= 1
        )

    def _check_cache(self, cache, cache_index, offset):
        expected = (2, None, self.num_heads, self.key_dim)
        if len(cache.shape) != 5 or any(
            want is not None and got is not None and want != got
            for want, got in zip(expected, cache.shape[1:], strict=True)
        ):
            raise ValueError(
                "cache must have shape (batch, 2, length, num_heads="
                f"{self.num_heads}, key_dim={self.key_dim}), received "
                f"shape {tuple(cache.shape)}"
            )
        if self.value_dim != self.key_dim:
            raise ValueError(
                "A cache holds keys and values in one tensor, so it needs "
                f"value_dim == key_dim; this layer has key_dim={self.key_dim}"
                f", value_dim={self.value_dim}"
            )
        if cache_index is None:
            raise ValueError(
                "cache needs cache_index, the position where this call's "
                "first token goes (0 for a prompt from the start), "
                "received cache_index=None"
            )
        if not (isinstance(offset, int) and offset == 0):
            raise ValueError(
                "With a cache, cache_index is the queries' position: pass "
                f"it instead of offset, received offset={offset!r}"
            )
        return ops.cast(cache, self.compute_dtype)

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return query_shape

    def compute_output_spec(self, query, value, key=None, **kwargs):
        key = value if key is None else key
        cache = kwargs.get("cache")
        outputs = (keras.KerasTensor(query.shape, dtype=self.compute_dtype),)
        if kwargs.get("return_attention_scores"):
            keys = key.shape[1] if cache is None else cache.shape[2]
            outputs += (
                keras.KerasTensor(
                    (query.shape[0], self.num_heads, query.shape[1], keys),
                    dtype=self.compute_dtype,
                ),
            )
        if cache is not None:
            outputs += (
                keras.KerasTensor(cache.shape, dtype=self.compute_dtype),
            )
        return outputs[0] if len(outputs) == 1 else outputs

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
            "block_size": self.block_size,
        }
