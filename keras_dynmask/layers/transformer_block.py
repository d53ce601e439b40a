"""A Transformer block (attention + feed-forward) that keeps masks alive."""

import keras
from keras import ops

from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import score_config
from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers.multi_head_attention import MultiHeadAttention

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class TransformerBlock(keras.layers.Layer):
    """Self-attention with a pattern, then a feed-forward network.

    With `cross_attention=True` (a decoder block), a cross-attention to a
    `context` (the encoder's output) sits between them; it reads the
    context's propagated padding mask, so source padding is never attended.

    Each sub-block is residual, with layer normalization before it
    (`normalize_first=True`, pre-LN) or after it (post-LN, as in BERT). The
    residual sums happen inside the layer, so the padding mask survives any
    number of stacked blocks (stock Keras loses it after one residual
    attention block).

    Masking: reads the propagated `(B, T)` mask of `inputs`; the output
    carries the same mask.

    Args:
        num_heads: int > 0.
        intermediate_dim: int > 0. Width of the feed-forward layer.
        pattern: `Pattern` or pattern text. Defaults to `"bidirectional"`.
        key_dim: int > 0. Size of each head. Defaults to
            `hidden_dim // num_heads`.
        dropout: float in `[0, 1)`. Dropout after attention and
            feed-forward and on attention weights. Defaults to `0.0`.
        activation: feed-forward activation. Defaults to `"gelu"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        normalize_first: bool. Pre-LN when `True`. Defaults to `True`.
        kernel_initializer: initializer. Defaults to `"glorot_uniform"`.
        cross_attention: bool. Adds cross-attention to a `context`.
            Defaults to `False`.
        cross_pattern: `Pattern` or text for the cross-attention, over
            (target, source) positions. Defaults to `"bidirectional"`.
        block_size: int > 0 or `None`. The self-attention's block size,
            with which it skips what window, segment and causal patterns
            hide (see `MultiHeadAttention`); `None` keeps it dense.
            Defaults to `128`.
        score: score modifiers for the self-attention, as for
            `MultiHeadAttention` (`"alibi"`, `"relative(32, 128, causal)"`,
            ...); the cross-attention has none. Defaults to `None`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: tensor `(B, T, D)`.
        context: tensor `(B, S, D)`, the encoder's output, with its mask;
            required when `cross_attention=True`.
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: per-example inputs the self-attention's pattern
            reads (`keras_dynmask.patterns.PATTERN_INPUTS`);
            `key_segment_ids` covers the cached positions with a cache.
        attention_mask: optional bool `(B, T, T)`, ANDed with the
            self-attention's mask (for masks computed elsewhere).
        cache: optional `(B, 2, S, num_heads, key_dim)` keys and values of
            the self-attention for earlier positions (see
            `MultiHeadAttention`); the block then returns `(outputs, cache)`
            with this call's keys and values written at `cache_index`.
        cache_index: int or int tensor `(B,)`. Position of the first input
            token; required with `cache`.
        context_cache: optional `(B, 2, S, num_heads, key_dim)`, the
            cross-attention's keys and values of the context, from
            `context_keys_and_values` (computed once for a whole decoding),
            in place of `context`; `context_mask` `(B, S)` then marks its
            real positions.
        training: bool. Enables dropout.

    Returns:
        `(B, T, D)`, carrying the input's mask; with a cache, also the
        updated cache.

    Example:

    >>> import numpy as np, keras, keras_dynmask
    >>> ids = np.array([[3, 4, 0]])
    >>> x = keras.layers.Embedding(5, 8, mask_zero=True)(ids)
    >>> block = keras_dynmask.TransformerBlock(2, 16, pattern="causal")
    >>> y = block(block(x))
    >>> keras_dynmask.get_keras_mask(y).numpy()
    array([[ True,  True, False]])
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        pattern="bidirectional",
        key_dim=None,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        normalize_first=True,
        kernel_initializer="glorot_uniform",
        cross_attention=False,
        cross_pattern="bidirectional",
        block_size=128,
        score=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.intermediate_dim = check_int(
            "intermediate_dim", intermediate_dim, minimum=1
        )
        self.pattern = as_pattern(pattern)
        if key_dim is not None:
            key_dim = check_int("key_dim", key_dim, minimum=1)
        self.key_dim = key_dim
        self.dropout = check_fraction("dropout", dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalize_first = bool(normalize_first)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.cross_attention = bool(cross_attention)
        self.cross_pattern = as_pattern(cross_pattern, "cross_pattern")
        if block_size is not None:
            block_size = check_int("block_size", block_size, minimum=1)
        self.block_size = block_size
        self.score = as_scores(score)

    def build(self, inputs_shape, context_shape=None):
        hidden_dim = inputs_shape[-1]
        key_dim = self.key_dim
        if key_dim is None:
            if hidden_dim % self.num_heads:
                raise ValueError(
                    f"The hidden size {hidden_dim} is not divisible by "
                    f"num_heads={self.num_heads}; pass key_dim explicitly"
                )
            key_dim = hidden_dim // self.num_heads
        common = {
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "dtype": self.dtype_policy,
        }

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build(inputs_shape)
            return layer

        self._attention = MultiHeadAttention(
            self.num_heads,
            key_dim,
            dropout=self.dropout,
            pattern=self.pattern,
            block_size=self.block_size,
            score=self.score,
            name="attention",
            **common,
        )
        self._attention.build(inputs_shape, inputs_shape)
        self._attention_norm = norm("attention_norm")
        if self.cross_attention:
            context_shape = context_shape or inputs_shape
            self._cross_attention = MultiHeadAttention(
                self.num_heads,
                key_dim,
                dropout=self.dropout,
                pattern=self.cross_pattern,
                name="cross_attention",
                **common,
            )
            self._cross_attention.build(inputs_shape, context_shape)
            self._cross_norm = norm("cross_attention_norm")
        self._intermediate = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            name="intermediate",
            **common,
        )
        self._intermediate.build(inputs_shape)
        self._output = keras.layers.Dense(hidden_dim, name="output", **common)
        self._output.build((*inputs_shape[:-1], self.intermediate_dim))
        self._output_norm = norm("output_norm")
        self._dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )

    def call(
        self,
        inputs,
        context=None,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        attention_mask=None,
        cache=None,
        cache_index=None,
        context_cache=None,
        mask=None,
        inputs_mask=None,
        context_mask=None,
        training=None,
    ):
        # Keras fills `mask` for a lone tensor and `inputs_mask` (and
        # `context_mask`) when the layer gets several.
        mask = inputs_mask if inputs_mask is not None else mask
        given = context is not None or context_cache is not None
        if self.cross_attention and not given:
            raise ValueError(
                "This block has cross_attention=True: call it with "
                "context=<encoder output> (or context_cache=), received "
                "context=None"
            )
        if not self.cross_attention and given:
            raise ValueError(
                "This block has cross_attention=False, so it would ignore "
                "the context it was given: build it with "
                "cross_attention=True, or call it without context"
            )
        if context is not None and context_cache is not None:
            raise ValueError("Pass the context or its context_cache, not both")

        updated = []

        def self_attention(x):
            outputs = self._attention(
                x,
                x,
                query_mask=mask,
                # With a cache, the keys are the cached positions.
                value_mask=mask if cache is None else None,
                segment_ids=segment_ids,
                key_segment_ids=key_segment_ids,
                prefix_length=prefix_length,
                span_length=span_length,
                span_position=span_position,
                attention_mask=attention_mask,
                cache=cache,
                cache_index=cache_index,
                training=training,
            )
            if cache is None:
                return outputs
            updated.append(outputs[1])
            return outputs[0]

        def cross_attention(x):
            if context_cache is not None:
                return self._cross_attention.attend_to_cache(
                    x,
                    context_cache,
                    query_mask=mask,
                    key_mask=context_mask,
                    training=training,
                    offset=0 if cache_index is None else cache_index,
                )
            return self._cross_attention(
                x,
                context,
                query_mask=mask,
                value_mask=context_mask,
                training=training,
            )

        def feed_forward(x):
            return self._output(self._intermediate(x))

        x = self._residual(
            inputs, self._attention_norm, self_attention, training
        )
        if self.cross_attention:
            x = self._residual(x, self._cross_norm, cross_attention, training)
        x = self._residual(x, self._output_norm, feed_forward, training)
        if mask is not None:
            set_keras_mask(x, ops.cast(mask, "bool"))
        return x if cache is None else (x, updated[0])

    @property
    def self_attention(self):
        """The block's self-attention, a `MultiHeadAttention`; available
        once the block is built."""
        self._check_built("self_attention")
        return self._attention

    @property
    def pattern_variables(self):
        """The self-attention's pattern variables (see
        `MultiHeadAttention`); available once the block is built."""
        self._check_built("pattern_variables")
        return self._attention.pattern_variables

    def context_keys_and_values(self, context):
        """The cross-attention's keys and values of `context` `(B, S, D)`:
        the `context_cache` `(B, 2, S, num_heads, key_dim)` a decoding
        step reads in place of the context."""
        self._check_built("context_keys_and_values")
        if not self.cross_attention:
            raise ValueError(
                f"Block {self.name!r} has no cross-attention "
                "(cross_attention=False), so no context keys and values"
            )
        return self._cross_attention.keys_and_values(context)

    def _check_built(self, attribute):
        if not self.built:
            raise ValueError(
                f"Block {self.name!r} is not built yet: call it on an input "
                f"first, then read {attribute}"
            )

    def _residual(self, x, norm, transform, training):
        """`x + transform(norm(x))` (pre-LN) or `norm(x + transform(x))`."""
        inner = norm(x) if self.normalize_first else x
        x = x + self._dropout_layer(transform(inner), training=training)
        return x if self.normalize_first else norm(x)

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "pattern": str(self.pattern),
            "key_dim": self.key_dim,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "normalize_first": self.normalize_first,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "cross_attention": self.cross_attention,
            "cross_pattern": str(self.cross_pattern),
            "block_size": self.block_size,
            "score": score_config(self.score),
        }
