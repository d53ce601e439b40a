"""Multi-head attention that builds its mask from a pattern at call time."""

import keras
from keras import ops

from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core.scores import score_config
from keras_dynmask.layers._keras_mask import get_keras_mask
from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers._pattern_attention import PatternAttention
from keras_dynmask.layers._pattern_attention import own_attention
from keras_dynmask.layers._pattern_attention import positive_int

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class MultiHeadAttention(PatternAttention, keras.layers.MultiHeadAttention):
    """Multi-head attention whose mask is rebuilt for every batch.

    A drop-in for `keras.layers.MultiHeadAttention` (a subclass of it:
    every constructor and call argument of Keras' layer, its config, its
    sublayers `query_dense`, `key_dense`, `value_dense`, `output_dense` and
    so its weights files, LoRA and quantization) that also takes a
    `pattern` (`"causal"`, `"causal & window(3)"`, `"segment"`, ...) and
    combines it with the propagated query and key padding masks, Keras'
    `attention_mask`, `use_causal_mask` and `sliding_window`, into a
    `(B, T, S)` boolean mask each time it is called. Unlike Keras' layer it
    never clears the masks of its inputs, so a residual connection keep its
    mask, and it can decode with a key/value cache.

    Masking: reads `query_mask` and `value_mask` (or `key_mask`) from the
    propagated masks; the output carries the query mask `(B, T)` onward.

    Args:
        num_heads, key_dim, value_dim, dropout, use_bias, output_shape,
            attention_axes, sliding_window, flash_attention,
            kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer, activity_regularizer, kernel_constraint,
            bias_constraint, use_gate, seed: as for
            `keras.layers.MultiHeadAttention`, in its order. Inputs of
            rank > 3, or `attention_axes` other than the sequence axis, run
            Keras' own attention (no pattern, cache or offset there).
        pattern: `Pattern` or pattern text. Defaults to `"bidirectional"`.
        block_size: int > 0 or `None`. Self-attention (queries and keys
            at the same positions, our own `_compute_attention`, no cache)
            then skips what the mask hides, on the TensorFlow backend,
            with results equal to the dense path's:
            - window patterns (alone or with causal, backward, segment and
              padding masks): blocks of this many queries over only the
              key blocks the window reaches (`attention.blockwise`),
              whenever that is at most half the sequence; time and memory
              grow with `T x window`, not `T x T`;
            - any other pattern of the package's words, from
              `2 * block_size + 1` positions on: only the
              `block_size x block_size` tiles of the mask that hold a
              visible key, the full ones without an element mask
              (`attention.block_sparse`, planned by `attention.tile_mask`
              from the pattern and the padding), whenever at most
              two fifths of them do (packed documents, heavy padding);
            - `"causal"` with padding only: the queries in 4 chunks from
              `8 * block_size` positions, 8 from `16 * block_size`, each
              over the keys up to its end (`attention.causal`; 9/16 of
              the scores at most).
            On JAX and PyTorch, windows are computed block-wise too, over
            the key blocks of the pattern's bounds as written (shapes
            fixed when tracing; the dense path runs while a window
            variable reaches beyond them; so too on TensorFlow under XLA,
            `jit_compile=True`, as Keras' `fit` on a GPU), `"causal"`
            runs the backend's causal kernel, and other patterns the dense
            path. `None` always uses the dense path. Keras'
            `attention_mask`, `use_causal_mask` and `sliding_window` take
            the dense path.
            Defaults to `128`.
        score: score modifiers (`keras_dynmask.ALiBi()`, `SoftCap(30.0)`,
            `RelativeBias(32, 128)`, `ScoreFunction(fn)`), a list of them
            applied in order, their text (`"alibi"`, `"alibi, softcap(30)"`,
            `"relative(32, 128, causal)"`) or `None`. They change the
            float32 score of every key before the mask hides some, at
            absolute positions: query `t` stands at `offset + t` (or
            `cache_index + t`), key `s` at `s`, so a cached decoding step
            scores as the full pass. Every path takes them: the fused
            kernel as its `bias` when all of them only add one (ALiBi, a
            relative bias) in float32, else the written-out dense steps;
            the block-wise, block-sparse and decoding paths at their
            blocks', tiles' and step's positions, `"causal"`'s chunks on
            TensorFlow at theirs (on JAX and PyTorch, whose causal kernels
            take no modifier, `"causal"` with modifiers takes the dense
            path). A `RelativeBias` table is a weight of this layer
            (named by the modifier, zeros to start). Defaults to `None`.
        **kwargs: base layer arguments.

    Call arguments:
        query: tensor `(B, T, D)`.
        value: tensor `(B, S, Dv)`.
        key: tensor `(B, S, Dk)`. Defaults to `value`.
        query_mask, value_mask, key_mask: bool `(B, T)` / `(B, S)`; filled
            from the propagated masks when not given.
        attention_mask: bool `(B, T, S)`, `(T, S)` (the same for every
            example) or `(B, num_heads, T, S)`, ANDed with everything else.
        use_causal_mask: bool. ANDs the causal mask (at the call's offset).
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
        output_shape=None,
        attention_axes=None,
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
            positive_int("num_heads", num_heads),
            positive_int("key_dim", key_dim),
            value_dim=None
            if value_dim is None
            else positive_int("value_dim", value_dim),
            dropout=check_fraction("dropout", dropout),
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=attention_axes,
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

    @property
    def sliding_window(self):
        """Keras' `sliding_window` (`None`, or `W`: `|i - j| < W`)."""
        return self._sliding_window

    def _head_counts(self):
        """(query heads, key/value heads, key size, value size)."""
        return self.num_heads, self.num_heads, self.key_dim, self.value_dim

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
        key = value if key is None else key
        per_example = {
            "segment_ids": segment_ids,
            "key_segment_ids": key_segment_ids,
            "prefix_length": prefix_length,
            "span_length": span_length,
            "span_position": span_position,
        }
        stock = {
            "query_mask": query_mask,
            "value_mask": value_mask,
            "key_mask": key_mask,
            "attention_mask": attention_mask,
            "return_attention_scores": return_attention_scores,
            "training": training,
            "use_causal_mask": use_causal_mask,
        }
        if len(query.shape) != 3 or tuple(self._attention_axes) != (1,):
            return self._stock_call(
                query, value, key, cache, offset, per_example, **stock
            )
        return self._pattern_call(
            query,
            value,
            key,
            **stock,
            per_example=per_example,
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
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Keras' extension point, as on its layer: projected heads `(B, T,
        N, H)` (query unscaled) and the call's bool mask `(B|1, T, S)` or
        `(B, N, T, S)` in, `(attended (B, T, N, H), weights (B, N, T, S))`
        out; `use_causal_mask` ANDs the causal mask (`call` has already
        folded it into the mask it passes). A subclass that overrides it
        sees every call (the block-wise path is then not taken). Other
        ranks and attention axes go to Keras' own."""
        if len(query.shape) != 4 or tuple(self._attention_axes) != (1,):
            return super()._compute_attention(
                query,
                key,
                value,
                attention_mask,
                training,
                return_attention_scores,
                use_causal_mask=use_causal_mask,
            )
        attended, _, weights = softmax_attention(
            self._scaled(query),
            key,
            value,
            self._causal_and(attention_mask, query, key, use_causal_mask),
            score=self._score_at(ops.shape(query)[1], ops.shape(key)[1]),
            **self._dropout_and_weights(training, return_attention_scores),
        )
        return attended, weights

    def _dense_attention(self, heads, mask, training, return_scores):
        return self._compute_attention(*heads, mask, training, return_scores)

    def _stock_call(self, query, value, key, cache, offset, per_example, **kw):
        """Inputs of rank > 3 or other `attention_axes`: Keras' own
        attention, which the pattern cannot reach; the inputs keep their
        masks."""
        given = {name for name, v in per_example.items() if v is not None}
        if (
            cache is not None
            or given
            or not (isinstance(offset, int) and offset == 0)
            or str(self.pattern) != "bidirectional"
            or self.score
        ):
            raise ValueError(
                "A pattern, score modifiers, cache, offset or per-example "
                "inputs apply to queries (B, T, D) attending over axis 1; "
                f"this call has query shape {tuple(query.shape)} and "
                f"attention_axes={self._attention_axes}, pattern "
                f"{str(self.pattern)!r}, score {score_config(self.score)!r}"
            )
        held = [(x, get_keras_mask(x)) for x in (query, value, key)]
        try:
            return super().call(query, value, key, **kw)
        finally:
            for x, mask in held:
                set_keras_mask(x, mask)
