"""keras-hub's `TransformerDecoder` interface, with patterns and live masks.

The decoder counterpart of `TransformerEncoder`: keras-hub's arguments,
call arguments, caches and sublayer names, over this package's attention.
"""

import keras
from keras import ops

from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers._keras_mask import without_mask
from keras_dynmask.layers.multi_head_attention import MultiHeadAttention
from keras_dynmask.layers.transformer_encoder import TransformerEncoder

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class TransformerDecoder(TransformerEncoder):
    """A Transformer decoder block with keras-hub's interface.

    Takes keras-hub's `TransformerDecoder` arguments, in its order and with
    its defaults, plus `pattern` for the self-attention (ANDed with the
    causal mask while `use_causal_mask=True`, keras-hub's default). Called
    on a decoder sequence alone it is a decoder-only block; called with an
    `encoder_sequence` the first time, it has cross-attention for good.
    Weights saved from keras-hub's `TransformerDecoder` load into it and
    give the same outputs on real positions; the padding masks survive the
    block.

    Args:
        intermediate_dim, num_heads, dropout, activation,
            layer_norm_epsilon, kernel_initializer, bias_initializer,
            normalize_first: as for keras-hub's `TransformerDecoder`.
        pattern: `Pattern` or text for the self-attention. Defaults to
            `"bidirectional"` (the causal mask comes from
            `use_causal_mask`).
        block_size: int or `None`, as for `MultiHeadAttention`.
        **kwargs: base layer arguments.

    Call arguments:
        decoder_sequence: `(B, T, D)`.
        encoder_sequence: optional `(B, S, D)`, for cross-attention.
        decoder_padding_mask, encoder_padding_mask: bool `(B, T)`, `(B,
            S)`. Default to the propagated masks.
        decoder_attention_mask: bool `(B, T, T)` (`(B, T, cache length)`
            with a cache), ANDed into the self-attention's mask.
        encoder_attention_mask: bool `(B, T, S)`, ANDed into the
            cross-attention's mask.
        self_attention_cache: `(B, 2, max length, num_heads, head size)`.
        self_attention_cache_update_index: int or int `(B,)`, where this
            call's tokens go; required with a self-attention cache.
        cross_attention_cache: `(B, 2, S, num_heads, head size)`.
        cross_attention_cache_update_index: `0` to write the encoder's
            keys and values into the cache, or `None` to attend to those
            already there (the encoder sequence is then not read).
        use_causal_mask: bool. Defaults to `True`.
        training: bool.
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: what the self-attention's pattern reads.

    Returns:
        The output `(B, T, D)`; with caches, `(output, self_attention_cache)`
        or, with cross-attention, `(output, self_attention_cache,
        cross_attention_cache)`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> decoder = keras_dynmask.TransformerDecoder(16, 2)
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 8))
    >>> whole = decoder(x)
    >>> cache = np.zeros((1, 2, 4, 2, 4), "float32")
    >>> first, cache = decoder(
    ...     x[:, :3], self_attention_cache=cache,
    ...     self_attention_cache_update_index=0)
    >>> last, cache = decoder(
    ...     x[:, 3:], self_attention_cache=cache,
    ...     self_attention_cache_update_index=3)
    >>> bool(np.allclose(last[:, 0], whole[:, 3], atol=1e-5))
    True
    """

    _self_attention_name = "self_attention"

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
        # keras-hub's config records the build shapes, to build on load.
        decoder_shape = kwargs.pop("decoder_sequence_shape", None)
        encoder_shape = kwargs.pop("encoder_sequence_shape", None)
        super().__init__(
            intermediate_dim,
            num_heads,
            dropout=dropout,
            activation=activation,
            layer_norm_epsilon=layer_norm_epsilon,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            normalize_first=normalize_first,
            pattern=pattern,
            block_size=block_size,
            score=score,
            **kwargs,
        )
        self._decoder_sequence_shape = None
        self._encoder_sequence_shape = None
        self._cross_attention_layer = None
        if decoder_shape:
            self.build(decoder_shape, encoder_shape)

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        self._decoder_sequence_shape = decoder_sequence_shape
        self._encoder_sequence_shape = encoder_sequence_shape
        super().build(decoder_sequence_shape)
        if encoder_sequence_shape is None:
            return
        head_size = self._self_attention_layer.key_dim
        self._cross_attention_layer = MultiHeadAttention(
            self.num_heads,
            head_size,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="cross_attention",
            **self._initializers(),
        )
        self._cross_attention_layer.build(
            decoder_sequence_shape, encoder_sequence_shape
        )
        self._cross_attention_layer_norm = self._norm(
            "cross_attention_layer_norm", decoder_sequence_shape
        )
        self._cross_attention_dropout = keras.layers.Dropout(
            self.dropout,
            dtype=self.dtype_policy,
            name="cross_attention_dropout",
        )

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        cross_attention_cache_update_index=None,
        use_causal_mask=True,
        training=None,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        crossing = self._cross_attention_layer is not None
        self._check_call(
            crossing,
            encoder_sequence,
            self_attention_cache,
            self_attention_cache_update_index,
            cross_attention_cache,
        )
        padding = _first(decoder_padding_mask, decoder_sequence_mask)
        context_padding = _first(encoder_padding_mask, encoder_sequence_mask)
        caches = {}

        def self_attention(x):
            outputs = self._self_attention_layer(
                x,
                x,
                query_mask=padding,
                # With a cache, the keys are the cached positions.
                value_mask=padding if self_attention_cache is None else None,
                attention_mask=decoder_attention_mask,
                use_causal_mask=use_causal_mask,
                cache=self_attention_cache,
                cache_index=self_attention_cache_update_index,
                training=training,
                segment_ids=segment_ids,
                key_segment_ids=key_segment_ids,
                prefix_length=prefix_length,
                span_length=span_length,
                span_position=span_position,
            )
            if self_attention_cache is None:
                return outputs
            outputs, caches["self"] = outputs
            return outputs

        def cross_attention(x):
            layer = self._cross_attention_layer
            if cross_attention_cache is not None and (
                cross_attention_cache_update_index is None
            ):
                caches["cross"] = cross_attention_cache
                return layer.attend_to_cache(
                    x,
                    cross_attention_cache,
                    query_mask=padding,
                    key_mask=context_padding,
                    attention_mask=encoder_attention_mask,
                    training=training,
                )
            outputs = layer(
                x,
                encoder_sequence,
                query_mask=padding,
                value_mask=context_padding,
                key_mask=context_padding,
                attention_mask=encoder_attention_mask,
                cache=cross_attention_cache,
                cache_index=cross_attention_cache_update_index,
                training=training,
            )
            if cross_attention_cache is None:
                return outputs
            outputs, caches["cross"] = outputs
            return outputs

        x = self._residual(
            without_mask(decoder_sequence),
            self._self_attention_layer_norm,
            self_attention,
            self._self_attention_dropout,
            training,
        )
        if crossing:
            x = self._residual(
                x,
                self._cross_attention_layer_norm,
                cross_attention,
                self._cross_attention_dropout,
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
            set_keras_mask(x, ops.cast(padding, "bool"))
        if self_attention_cache is None:
            return x
        if crossing:
            return x, caches["self"], caches["cross"]
        return x, caches["self"]

    def _check_call(
        self, crossing, encoder_sequence, self_cache, self_index, cross_cache
    ):
        if crossing != (encoder_sequence is not None):
            raise ValueError(
                "A decoder is built with cross-attention or without it by "
                "its first call, and keeps it: this one has "
                f"{'a' if crossing else 'no'} cross-attention, so call it "
                f"{'with' if crossing else 'without'} encoder_sequence"
            )
        if crossing and (self_cache is None) != (cross_cache is None):
            raise ValueError(
                "With cross-attention, self_attention_cache and "
                "cross_attention_cache are given together or not at all; "
                f"received self_attention_cache "
                f"{'None' if self_cache is None else 'set'}, "
                f"cross_attention_cache "
                f"{'None' if cross_cache is None else 'set'}"
            )
        if self_cache is not None and self_index is None:
            raise ValueError(
                "self_attention_cache needs "
                "self_attention_cache_update_index, where this call's tokens "
                "go (0 for a prompt), received None"
            )

    def compute_output_shape(self, decoder_sequence_shape, *args, **kwargs):
        return decoder_sequence_shape

    def compute_output_spec(self, decoder_sequence, *args, **kwargs):
        output = keras.KerasTensor(
            decoder_sequence.shape, dtype=self.compute_dtype
        )
        self_cache = kwargs.get("self_attention_cache")
        if self_cache is None:
            return output
        outputs = (
            output,
            keras.KerasTensor(self_cache.shape, self.compute_dtype),
        )
        cross_cache = kwargs.get("cross_attention_cache")
        if cross_cache is not None:
            outputs += (
                keras.KerasTensor(cross_cache.shape, self.compute_dtype),
            )
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "decoder_sequence_shape": self._decoder_sequence_shape,
            "encoder_sequence_shape": self._encoder_sequence_shape,
        }


def _first(given, propagated):
    return propagated if given is None else given
