"""Grouped-query attention that builds its mask from a pattern at call time."""

import keras
from keras import ops

from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core._checks import check_fraction
from keras_dynmask.layers._pattern_attention import PatternAttention
from keras_dynmask.layers._pattern_attention import own_attention
from keras_dynmask.layers._pattern_attention import positive_int

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class GroupedQueryAttention(PatternAttention, keras.layers.GroupQueryAttention):
    """Grouped-query attention whose mask is rebuilt for every batch.

    A drop-in for `keras.layers.GroupQueryAttention` (a subclass of it:
    every constructor and call argument, its config, its sublayers and so
    its weights files) that also takes a `pattern`, exactly as
    `keras_dynmask.MultiHeadAttention` does: the pattern, the propagated
    padding masks, Keras' `attention_mask` (`(T, S)`, `(B, T, S)` or
    `(B, num_query_heads, T, S)`), `use_causal_mask` and `sliding_window`
    make one mask per call; a query that sees no key outputs zeros; the
    inputs keep their masks; window patterns take the block-wise path.

    Its key/value cache holds `num_key_value_heads` heads, not
    `num_query_heads`: `(B, 2, S, num_key_value_heads, head_dim)`, so
    decoding keeps `num_query_heads / num_key_value_heads` times less in
    memory than multi-head attention of the same width.

    Args:
        head_dim, num_query_heads, num_key_value_heads, dropout, use_bias,
            sliding_window, flash_attention, kernel_initializer,
            bias_initializer, kernel_regularizer, bias_regularizer,
            activity_regularizer, kernel_constraint, bias_constraint,
            use_gate, seed: as for `keras.layers.GroupQueryAttention`, in
            its order.
        pattern: `Pattern` or pattern text. Defaults to `"bidirectional"`.
        block_size: int > 0 or `None`, as for `MultiHeadAttention`.
        score: score modifiers, a list of them, their text or `None`, as
            for `MultiHeadAttention` (one per query head). Defaults to
            `None`.
        **kwargs: base layer arguments.

    Call arguments: as for `MultiHeadAttention` (`query`, `value`, `key`,
    the masks, `attention_mask`, `use_causal_mask`,
    `return_attention_scores`, `training`, the pattern's per-example
    inputs, `offset`, `cache`, `cache_index`).

    Returns:
        `(B, T, D)`, then the weights `(B, num_query_heads, T, S)` when
        asked, then the updated cache when `cache` is given.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> gqa = keras_dynmask.GroupedQueryAttention(
    ...     head_dim=4, num_query_heads=4, num_key_value_heads=2,
    ...     pattern="causal")
    >>> x = np.random.default_rng(0).normal(size=(1, 3, 8))
    >>> cache = np.zeros((1, 2, 3, 2, 4), "float32")  # 2 key/value heads
    >>> y, cache = gqa(x, x, cache=cache, cache_index=0)
    >>> y.shape, cache.shape
    (TensorShape([1, 3, 8]), TensorShape([1, 2, 3, 2, 4]))
    """

    def __init__(
        self,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        dropout=0.0,
        use_bias=True,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        pattern="bidirectional",
        block_size=128,
        score=None,
        **kwargs,
    ):
        super().__init__(
            positive_int("head_dim", head_dim),
            positive_int("num_query_heads", num_query_heads),
            positive_int("num_key_value_heads", num_key_value_heads),
            dropout=check_fraction("dropout", dropout),
            use_bias=use_bias,
            sliding_window=sliding_window,
            flash_attention=flash_attention,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            use_gate=use_gate,
            seed=seed,
            **kwargs,
        )
        self._init_pattern(pattern, block_size, score)

    def _head_counts(self):
        """(query heads, key/value heads, key size, value size)."""
        return (
            self.num_query_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.head_dim,
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
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        offset=0,
        cache=None,
        cache_index=None,
    ):
        return self._pattern_call(
            query,
            value,
            value if key is None else key,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            use_causal_mask=use_causal_mask,
            per_example={
                "segment_ids": segment_ids,
                "key_segment_ids": key_segment_ids,
                "prefix_length": prefix_length,
                "span_length": span_length,
                "span_position": span_position,
            },
            offset=offset,
            cache=cache,
            cache_index=cache_index,
        )

    @own_attention
    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        use_causal_mask=False,
    ):
        """Keras' extension point, as on its layer (keys and values already
        repeated to one per query head); see
        `MultiHeadAttention._compute_attention`."""
        attended, _, weights = softmax_attention(
            self._scaled(query),
            key,
            value,
            self._causal_and(attention_mask, query, key, use_causal_mask),
            score=self._score_at(ops.shape(query)[1], ops.shape(key)[1]),
            **self._dropout_and_weights(
                training, self._return_attention_scores
            ),
        )
        return attended, weights

    def _dense_attention(self, heads, mask, training, return_scores):
        # Keras' layer passes this through the instance, not the arguments.
        self._return_attention_scores = return_scores
        return self._compute_attention(
            *heads, attention_mask=mask, training=training
        )
