"""What our attention layers add to Keras': the pattern, the per-call
mask, the key/value cache and the block-wise path.

`PatternAttention` is a mixin over a Keras attention layer (its projections
`_query_dense`, `_key_dense`, `_value_dense`, `_output_dense`, optional
`_gate_dense`, and `_dropout_layer`). A layer that uses it says how many
query and key/value heads it has (`_head_counts`) and how its dense
attention runs (`_dense_attention`); everything else is here.
"""

import math
import numbers

import keras
from keras import ops

from keras_dynmask.attention import block_sparse
from keras_dynmask.attention import blockwise
from keras_dynmask.attention import tile_mask
from keras_dynmask.attention.cache import write_keys_and_values
from keras_dynmask.attention.causal import causal_attention
from keras_dynmask.attention.softmax import rows_with_keys
from keras_dynmask.attention.softmax import single_query_attention
from keras_dynmask.core import masks
from keras_dynmask.core import patterns
from keras_dynmask.core._checks import check_int
from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.core.scores import Scoring
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import score_config
from keras_dynmask.layers._keras_mask import set_keras_mask
from keras_dynmask.layers._keras_mask import without_mask
from keras_dynmask.layers._score_weights import score_weights
from keras_dynmask.layers.attention_mask import call_attention_mask
from keras_dynmask.layers.attention_mask import pattern_variables

PER_EXAMPLE = (
    "segment_ids",
    "key_segment_ids",
    "prefix_length",
    "span_length",
    "span_position",
)


def _given_mask(attention_mask, num_heads):
    """A caller's `attention_mask` as bool `(B|1, T, S)` or `(B, N, T, S)`."""
    given = ops.cast(attention_mask, "bool")
    rank = len(given.shape)
    if rank == 2:  # (T, S): one mask for every example
        return ops.expand_dims(given, 0)
    if rank == 4 and given.shape[1] not in (None, 1, num_heads):
        raise ValueError(
            f"attention_mask of shape (B, heads, T, S) must have {num_heads} "
            f"heads (or 1), received shape {tuple(attention_mask.shape)}"
        )
    if rank not in (3, 4):
        raise ValueError(
            "attention_mask must have shape (T, S), (B, T, S) or (B, heads, "
            f"T, S), received shape {tuple(attention_mask.shape)}"
        )
    return given


def positive_int(name, value):
    """A positive int, or Keras' error (naming the value's type too)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"positive integer. Received: {name}={value!r} of type "
            f"{type(value).__name__}"
        )
    return int(value)


class CallMasks:
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
        use_causal_mask=False,
    ):
        self.layer = layer
        self.use_causal_mask = bool(use_causal_mask)
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
        for extra in self._stock_masks():
            mask = extra if mask is None else and_masks(mask, extra)
        return mask

    @property
    def needs_dense(self):
        """Whether something beyond the pattern and the padding decides
        this call's mask (then only the dense path applies)."""
        return (
            self.attention_mask is not None
            or self.use_causal_mask
            or self.layer.sliding_window is not None
        )

    def _stock_masks(self):
        """Keras' own mask arguments: `attention_mask`, `use_causal_mask`
        and the layer's `sliding_window` (`|i - j| < W`), each at this
        call's offset."""
        query_length = ops.shape(self.query)[1]
        key_length = ops.shape(self.key)[1]
        if self.attention_mask is not None:
            yield _given_mask(self.attention_mask, self.layer.query_heads)
        if self.use_causal_mask:
            yield masks.causal_mask(query_length, key_length, self.offset)
        if self.layer.sliding_window is not None:
            width = self.layer.sliding_window - 1
            yield masks.window_mask(
                width,
                query_length=query_length,
                key_length=key_length,
                offset=self.offset,
            )


def _same_positions(query, key, value):
    """Whether the queries and keys are known to be the same positions: the
    same tensor, or equal static lengths."""
    if query is key and key is value:
        return True
    lengths = {query.shape[1], key.shape[1], value.shape[1]}
    return len(lengths) == 1 and None not in lengths


def _known(value):
    """The scalar tensor `value` as a Python value when it is known now
    (eager), else `None` (a value being traced, as under `jax.jit`)."""
    try:
        return ops.convert_to_numpy(value).item()
    except Exception:  # the backends raise different errors on tracers
        return None


def and_masks(mask, other):
    """AND of `(B|1, T, S)` and `(B|1, [N,] T, S)` masks."""
    if len(mask.shape) < len(other.shape):
        mask = ops.expand_dims(mask, 1)
    elif len(other.shape) < len(mask.shape):
        other = ops.expand_dims(other, 1)
    return ops.logical_and(mask, other)


def own_attention(function):
    """Marks a layer's own `_compute_attention`: a subclass that replaces
    it must see every call, so the block-wise path is then not taken."""
    function.keras_dynmask_own = True
    return function


class PatternAttention:
    """The mixin; see the module docstring."""

    def _init_pattern(self, pattern, block_size, score=None):
        self.pattern = as_pattern(pattern)
        self.pattern_variables = pattern_variables(self, self.pattern)
        self.score = as_scores(score)
        for modifier in self.score:
            modifier.check_heads(self.query_heads)
        self.score_variables = score_weights(self, self.score, self.query_heads)
        self._scoring = None
        if self.score:
            self._scoring = Scoring(
                self.score,
                self.score_variables,
                causal=self.pattern.hides_future(held_unknown=True),
            )
        object.__setattr__(self, "_score_offset", 0)
        if block_size is not None:
            block_size = check_int("block_size", block_size, minimum=1)
        self.block_size = block_size
        self._blockwise = block_size is not None and blockwise.supports(
            self.pattern
        )

    @property
    def query_heads(self):
        return self._head_counts()[0]

    def _pattern_call(
        self,
        query,
        value,
        key,
        query_mask,
        value_mask,
        key_mask,
        attention_mask,
        return_attention_scores,
        training,
        use_causal_mask,
        per_example,
        offset,
        cache,
        cache_index,
        reuse_cache=False,
    ):
        """The call on `(B, T, D)` inputs; see the layers' docstrings.
        With `reuse_cache`, the keys and values are the cache's, as they
        are (nothing is projected or written)."""
        if cache is None:
            key_mask = value_mask if key_mask is None else key_mask
            if cache_index is not None:
                raise ValueError(
                    "cache_index places new keys in a cache: pass cache= "
                    f"too, received cache_index={cache_index!r}, cache=None"
                )
        if self._flash_attention and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to "
                "access attention scores."
            )
        # The mask is applied below; the projections need not see it.
        query_heads = self._query_dense(without_mask(query))
        if reuse_cache:
            cache = ops.cast(cache, self.compute_dtype)
            # Unstacked, not sliced: TFLite runs a strided slice of a 5-D
            # tensor element by element (a decode step took 4x as long).
            key_heads, value_heads = ops.unstack(cache, 2, axis=1)
            key = key_heads
        else:
            key_heads = self._key_dense(without_mask(key))
            value_heads = self._value_dense(without_mask(value))
        if cache is not None and not reuse_cache:
            cache = self._updated_cache(
                cache, cache_index, offset, key_heads, value_heads
            )
            key_heads, value_heads = ops.unstack(cache, 2, axis=1)
            key, offset = key_heads, cache_index
        key_heads, value_heads = self._repeat_key_value(key_heads, value_heads)
        # Where query 0 stands, for the modifiers of `_compute_attention`.
        object.__setattr__(self, "_score_offset", offset)
        call_masks = CallMasks(
            self,
            query,
            key,
            query_mask,
            key_mask,
            offset,
            attention_mask,
            per_example,
            use_causal_mask=use_causal_mask,
        )
        heads = (query_heads, key_heads, value_heads)
        weights = None
        if not return_attention_scores and self._takes_blocks(
            value, cache, call_masks, training
        ):
            attended, has_key = self._blocks_or_dense(
                heads, call_masks, training
            )
        elif not return_attention_scores and self._takes_causal_kernel(
            value, cache, call_masks, training
        ):
            attended, has_key = causal_attention(
                self._scaled(query_heads),
                key_heads,
                value_heads,
                call_masks.key_mask,
                block_size=self.block_size,
                score=self._scoring,
            )
            if call_masks.query_mask is not None:
                query_mask = ops.cast(call_masks.query_mask, "bool")
                has_key = (
                    query_mask
                    if has_key is None
                    else ops.logical_and(has_key, query_mask)
                )
        elif not return_attention_scores and self._takes_tiles(
            value, cache, call_masks
        ):
            attended, has_key = self._tiles_or_dense(
                heads, call_masks, training
            )
        elif not return_attention_scores and self._takes_single_query(
            query_heads, cache, training
        ):
            attended, has_key = single_query_attention(
                self._scaled(query_heads),
                key_heads,
                value_heads,
                call_masks.dense(),
                score=self._score_at(1, ops.shape(key_heads)[1], offset),
            )
        else:
            mask = call_masks.dense()
            attended, weights = self._dense_attention(
                heads, mask, training, return_attention_scores
            )
            has_key = rows_with_keys(mask, query_heads)
        # A later direct `_compute_attention` call starts from position 0.
        object.__setattr__(self, "_score_offset", 0)
        if getattr(self, "_gate_dense", None) is not None:
            attended = attended * self._gate_dense(without_mask(query))
        output = self._output_dense(attended)
        if has_key is not None:
            # A query that sees no key outputs zeros, not the bias.
            has_key = ops.reshape(
                has_key, (*ops.shape(has_key), *[1] * (len(output.shape) - 2))
            )
            output = ops.where(has_key, output, ops.zeros_like(output))
        if query_mask is not None:
            set_keras_mask(output, ops.cast(query_mask, "bool"))
        outputs = (output,)
        if return_attention_scores:
            outputs += (weights,)
        if cache is not None and not reuse_cache:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def attend_to_cache(
        self,
        query,
        cache,
        query_mask=None,
        key_mask=None,
        attention_mask=None,
        training=None,
        offset=0,
    ):
        """Attention of `query` over the keys and values already in `cache`,
        which is neither written nor returned: a cross-attention's cache of
        the encoder output, made once (`keys_and_values`, or
        `cache_index=0`) and reused at every decoding step.

        Args:
            query: `(B, T, D)`.
            cache: `(B, 2, S, key/value heads, head size)`.
            query_mask: bool `(B, T)`.
            key_mask: bool `(B, S)`, the cached positions that are real.
            attention_mask: bool `(B, T, S)`.
            training: bool.
            offset: int or int `(B,)`. The position of query 0 for the
                pattern (a decoding step's position). Defaults to `0`.

        Returns:
            `(B, T, D)`.
        """
        return self._pattern_call(
            query,
            query,
            query,
            query_mask=query_mask,
            value_mask=None,
            key_mask=key_mask,
            attention_mask=attention_mask,
            return_attention_scores=False,
            training=training,
            use_causal_mask=False,
            per_example={},
            offset=offset,
            cache=cache,
            cache_index=None,
            reuse_cache=True,
        )

    def keys_and_values(self, key, value=None):
        """The projected keys and values of `key` and `value` (defaults to
        `key`), stacked as the cache `attend_to_cache` reads: `(B, 2, S,
        key/value heads, head size)`. A decoder computes its
        cross-attention's once from the encoder output."""
        value = key if value is None else value
        key_heads = self._key_dense(without_mask(key))
        value_heads = self._value_dense(without_mask(value))
        return ops.stack([key_heads, value_heads], axis=1)

    def _repeat_key_value(self, key_heads, value_heads):
        """Key and value heads repeated to one per query head."""
        query_heads, key_value_heads, _, _ = self._head_counts()
        repeats = query_heads // key_value_heads
        if repeats == 1:
            return key_heads, value_heads
        return (
            ops.repeat(key_heads, repeats, axis=2),
            ops.repeat(value_heads, repeats, axis=2),
        )

    def _dropout_and_weights(self, training, return_weights):
        """`softmax_attention`'s `dropout` and `weights`: no dropout when
        the layer has none or is not training, so that Keras' fused
        kernel can run."""
        dropout = None
        if self._dropout_layer.rate > 0.0 and training:

            def dropout(weights):
                return self._dropout_layer(weights, training=training)

        return {"dropout": dropout, "weights": bool(return_weights)}

    def _score_at(self, query_length, key_length, offset=None):
        """The layer's modifiers placed at queries `offset + arange(T)`
        (`offset` defaults to this call's) over keys `arange(S)`, or
        `None` without modifiers."""
        if self._scoring is None:
            return None
        offset = self._score_offset if offset is None else offset
        offset = ops.reshape(ops.cast(offset, "int32"), (-1, 1))
        queries = ops.expand_dims(ops.arange(query_length, dtype="int32"), 0)
        return self._scoring.at(
            queries + offset, ops.arange(key_length, dtype="int32")
        )

    def _scaled(self, query_heads):
        key_size = self._head_counts()[2]
        query_heads = ops.convert_to_tensor(query_heads)
        return ops.multiply(
            query_heads,
            ops.cast(1.0 / math.sqrt(key_size), query_heads.dtype),
        )

    def _causal_and(self, attention_mask, query, key, use_causal_mask):
        """`attention_mask` as bool `(B|1, [N,] T, S)`, ANDed with the
        causal mask when asked (for `_compute_attention`)."""
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            if len(attention_mask.shape) == 2:
                attention_mask = ops.expand_dims(attention_mask, 0)
        if use_causal_mask:
            causal = masks.causal_mask(ops.shape(query)[1], ops.shape(key)[1])
            attention_mask = (
                causal
                if attention_mask is None
                else and_masks(attention_mask, causal)
            )
        return attention_mask

    def _updated_cache(
        self, cache, cache_index, offset, key_heads, value_heads
    ):
        """The cache with this call's keys and values written in."""
        cache = self._check_cache(cache, cache_index, offset)
        return write_keys_and_values(cache, key_heads, value_heads, cache_index)

    def _blocks_or_dense(self, heads, call_masks, training):
        """`(attended, has_key)` block by block when the window reaches at
        most half the sequence (decided when tracing if the lengths and
        bounds are known then, else in the graph), else by the dense
        path. On JAX and PyTorch (and under XLA on TensorFlow) the key
        blocks gathered are the pattern's bounds as written, and the dense
        path runs while a window variable reaches beyond them."""
        query_heads, key_heads, value_heads = heads

        dropout = self._dropout_and_weights(training, False)["dropout"]
        static = not blockwise.available()
        if static:
            gathered = blockwise.static_blocks(self.pattern, self.block_size)
            before, after = gathered
        else:
            gathered = None
            before, after = blockwise.key_blocks(
                self.pattern, self.pattern_variables, self.block_size
            )

        def blocks():
            return blockwise.attention(
                self._scaled(query_heads),
                key_heads,
                value_heads,
                self.pattern,
                self.block_size,
                variables=self.pattern_variables,
                query_mask=call_masks.query_mask,
                key_mask=call_masks.key_mask,
                segment_ids=call_masks.inputs.get("segment_ids"),
                dropout=dropout,
                blocks=gathered,
                score=self._scoring,
            )

        def dense():
            return self._dense_with_rows(heads, call_masks, training)

        # Blocks pay once each query block reads at most half the sequence
        # (window 256, blocks of 128: 0.92x dense's speed at T = 512, where
        # they read 3/4 of it; 1.26x at T = 768; 5x at T = 4096;
        # benchmarks/scaling.py).
        lengths = (call_masks.query.shape[1], call_masks.key.shape[1])
        reach = 2 * (before + after + 1) * self.block_size
        if all(isinstance(n, int) for n in (*lengths, reach)):
            # Known when tracing: no `cond` for the length.
            if lengths[0] != lengths[1] or reach > lengths[0]:
                return dense()
            if not static:
                return blocks()
            needed = blockwise.key_blocks(
                self.pattern, self.pattern_variables, self.block_size
            )
            within = ops.logical_and(
                ops.less_equal(needed[0], before),
                ops.less_equal(needed[1], after),
            )
            fits = _known(within)
            if fits is not None:  # eager: decided here
                return blocks() if fits else dense()
            return ops.cond(within, blocks, dense)
        length = ops.shape(call_masks.query)[1]
        fewer_keys = ops.logical_and(
            ops.less_equal(reach, length),
            ops.equal(length, ops.shape(call_masks.key)[1]),
        )
        return ops.cond(fewer_keys, blocks, dense)

    def _dense_with_rows(self, heads, call_masks, training):
        """`(attended, has_key)` by the dense path, `has_key` always a
        tensor (the other branch of a `cond` returns one)."""
        mask = call_masks.dense()
        attended, _ = self._dense_attention(heads, mask, training, False)
        has_key = rows_with_keys(mask, heads[0])
        if has_key is None:
            has_key = ops.ones(ops.shape(attended)[:2], "bool")
        return attended, has_key

    def _computes_its_own_attention(self):
        """Whether `_compute_attention` is ours: a subclass that replaces
        it must see every call, so no other path may be taken."""
        own = type(self)._compute_attention
        return getattr(own, "keras_dynmask_own", False)

    def _own_self_attention(self, cache, call_masks):
        """Whether this call is one the layer's own kernels may take: our
        `_compute_attention`, no cache, offset 0 and no keys of other
        documents. Each kernel adds its own conditions on the pattern and
        the lengths."""
        return (
            self._computes_its_own_attention()
            and cache is None
            and call_masks.inputs.get("key_segment_ids") is None
            and isinstance(call_masks.offset, int)
            and call_masks.offset == 0
        )

    def _takes_blocks(self, value, cache, call_masks, training):
        """Whether this call may use block-wise attention: a window
        pattern, queries and keys at the same positions (lengths not known
        to differ: the graph checks), nothing that needs a dense
        `(B, T, S)` mask; on JAX and PyTorch, lengths known when tracing
        and no active dropout."""
        lengths = {
            call_masks.query.shape[1],
            call_masks.key.shape[1],
            value.shape[1],
        } - {None}
        # JAX and PyTorch: lengths known when tracing, and no dropout
        # (whose random state should not be drawn inside a `cond`).
        static = (
            len(lengths) == 1
            and None not in (call_masks.query.shape[1], value.shape[1])
            and not (self._dropout_layer.rate > 0.0 and training)
        )
        return (
            self._blockwise
            and self._own_self_attention(cache, call_masks)
            and (blockwise.available() or static)
            and not call_masks.needs_dense
            and len(lengths) <= 1
        )

    def _takes_tiles(self, value, cache, call_masks):
        """Whether this call may use block-sparse attention: a pattern of
        the package's words in self-attention, decided by nothing but the
        pattern and the padding, on a backend with run-time shapes."""
        return (
            self.block_size is not None
            and tile_mask.supports(self.pattern)
            and self._own_self_attention(cache, call_masks)
            and block_sparse.available()
            and not call_masks.needs_dense
            and _same_positions(call_masks.query, call_masks.key, value)
        )

    def _tiles_or_dense(self, heads, call_masks, training):
        """`(attended, has_key)` over only the tiles of the mask that hold
        a visible key when at most two fifths of them do, else dense.

        Decided in the graph for this batch, from the pattern and the
        padding without the `(B, T, T)` mask (8 packed documents keep an
        eighth of the tiles; a prefix-LM mask over rows a third padding
        about a third; a causal mask alone half, where the gathering
        costs what the skipped tiles save). Sequences of at most two
        blocks always take the dense path, without planning (decided when
        tracing if the length is known): there the plan would cost more
        than it could save."""
        query_heads, key_heads, value_heads = heads
        length = ops.shape(query_heads)[1]

        def dense():
            return self._dense_with_rows(heads, call_masks, training)

        def planned():
            plan = {
                "pattern": self.pattern,
                "block_size": self.block_size,
                "length": length,
                "query_mask": call_masks.query_mask,
                "key_mask": call_masks.key_mask,
                "variables": self.pattern_variables,
                **call_masks.inputs,
            }
            some, every = tile_mask.grid(**plan)
            dropout = self._dropout_and_weights(training, False)["dropout"]

            def inside(rows, columns):
                return tile_mask.inside(rows=rows, columns=columns, **plan)

            def tiles():
                return block_sparse.attention(
                    self._scaled(query_heads),
                    key_heads,
                    value_heads,
                    self.block_size,
                    some,
                    every,
                    inside,
                    dropout=dropout,
                    score=self._scoring,
                )

            batch = ops.shape(query_heads)[0]
            count = ops.sum(
                ops.cast(some, "int32") * ops.ones((batch, 1, 1), "int32")
            )
            size = batch * ops.shape(some)[1] * ops.shape(some)[2]
            # Tiles pay up to about half the grid (bidirectional, B = 8,
            # T = 1,024: 1.5x dense's speed at 30% kept, 0.95x at 57%).
            return ops.cond(ops.less_equal(5 * count, 2 * size), tiles, dense)

        shortest = 2 * self.block_size + 1
        if isinstance(query_heads.shape[1], int):
            return planned() if query_heads.shape[1] >= shortest else dense()
        return ops.cond(ops.greater_equal(length, shortest), planned, dense)

    def _takes_single_query(self, query_heads, cache, training):
        """Whether this call is a decoding step: one query per row over a
        cache, no dropout, and our own `_compute_attention`."""
        return (
            self._computes_its_own_attention()
            and cache is not None
            and query_heads.shape[1] == 1
            and not (self._dropout_layer.rate > 0.0 and training)
        )

    def _takes_causal_kernel(self, value, cache, call_masks, training):
        """Whether this call is causal self-attention with at most padding
        masks, no dropout, keys and values of one head size, and score
        modifiers only on TensorFlow (the chunks take them; JAX's and
        PyTorch's causal kernels do not): then `causal_attention` runs."""
        return (
            isinstance(self.pattern, patterns.Causal)
            and (
                self._scoring is None or keras.backend.backend() == "tensorflow"
            )
            and self._own_self_attention(cache, call_masks)
            and self._head_counts()[2] == self._head_counts()[3]
            and not (self._dropout_layer.rate > 0.0 and training)
            and self.sliding_window is None
            and call_masks.attention_mask is None
            and _same_positions(call_masks.query, call_masks.key, value)
        )

    def _check_cache(self, cache, cache_index, offset):
        _, key_value_heads, key_size, value_size = self._head_counts()
        expected = (2, None, key_value_heads, key_size)
        if len(cache.shape) != 5 or any(
            want is not None and got is not None and want != got
            for want, got in zip(expected, cache.shape[1:], strict=True)
        ):
            raise ValueError(
                "cache must have shape (batch, 2, length, key/value heads="
                f"{key_value_heads}, head size={key_size}), received "
                f"shape {tuple(cache.shape)}"
            )
        if value_size != key_size:
            raise ValueError(
                "A cache holds keys and values in one tensor, so it needs "
                f"value_dim == key_dim; this layer has key_dim={key_size}, "
                f"value_dim={value_size}"
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

    def compute_output_spec(
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
        cache=None,
        **kwargs,
    ):
        """Keras' output spec, with the scores over the cache's length and
        the cache itself."""
        outputs = super().compute_output_spec(
            query,
            value,
            key,
            return_attention_scores=return_attention_scores,
        )
        if cache is None:
            return outputs
        if return_attention_scores:
            output, scores = outputs
            scores = keras.KerasTensor(
                (*scores.shape[:-1], cache.shape[2]), dtype=scores.dtype
            )
            outputs = (output, scores)
        else:
            outputs = (outputs,)
        cache = keras.KerasTensor(cache.shape, dtype=self.compute_dtype)
        return (*outputs, cache)

    def get_config(self):
        return {
            **super().get_config(),
            "pattern": str(self.pattern),
            "block_size": self.block_size,
            "score": score_config(self.score),
        }
