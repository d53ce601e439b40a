"""Which tiles of a pattern's mask hold a visible key, and the mask inside
chosen tiles, from the pattern's rules: never the whole `(T, S)` mask.

FlexAttention's `BlockMask` in `keras.ops`. A `(T, S)` mask cut into
`block x block` tiles has empty tiles (no query sees a key in them), full
ones (every query sees every key) and partial ones. Each word of a pattern
bounds this from the ranges a tile spans: the first and last positions of
its queries and keys, and the smallest and largest segment id among them;
`&`, `|` and `~` combine the bounds. A tile called empty is empty and one
called full is full; the rest get the element mask, which is exact. For a
word alone the bounds are exact (for `segment` when the ids are sorted, as
packed documents are); for compositions they may call a tile partial that
is empty or full, which costs time, never correctness.

So block-sparse attention costs `O(B * (T / block) * (S / block))` to plan
and `O(block * block)` memory per tile it keeps, instead of a `(B, T, S)`
mask.
"""

from keras import ops

from keras_dynmask.core import patterns
from keras_dynmask.core._checks import check_integer_tensor

_WORDS = (
    patterns.Causal,
    patterns.Backward,
    patterns.Bidirectional,
    patterns.Window,
    patterns.Prefix,
    patterns.Segment,
    patterns.Span,
)
_INT_MAX = 2**31 - 1


def supports(pattern):
    """Whether `pattern` is made only of the words whose tile bounds this
    module knows (all of the package's own)."""
    return all(isinstance(leaf, _WORDS) for leaf in pattern.leaves())


def grid(
    pattern,
    block_size,
    length,
    query_mask=None,
    key_mask=None,
    variables=None,
    **inputs,
):
    """Which tiles of the self-attention mask hold a visible key, and
    which hold nothing else.

    Args:
        pattern: a `Pattern` for which `supports(pattern)` holds.
        block_size: int > 0.
        length: int or scalar tensor. `T`, for queries and keys alike.
        query_mask, key_mask: bool `(B, T)` or `None`.
        variables: `{name: variable}` as in `Pattern.mask`.
        **inputs: the per-example tensors of `Pattern.mask` (`segment_ids`
            `(B, T)`, `prefix_length`, `span_length`, `span_position`
            `(B,)`).

    Returns:
        `(some, every)`: bool `(B|1, Q, Q)` with `Q = ceil(T / block)`.
        `some` is `True` for every tile with a visible key (and maybe for
        others), `every` only for tiles whose every query sees every key.
    """
    inputs = _checked(pattern, inputs)
    ranges = _Ranges(block_size, length, variables, inputs)
    ranges.summarize_segments(query_mask, key_mask)
    some, every = _bounds(pattern, ranges)
    for side, token_mask in (("query", query_mask), ("key", key_mask)):
        seen, whole = ranges.tokens(side, token_mask)
        some, every = ops.logical_and(some, seen), ops.logical_and(every, whole)
    return some, every


def inside(
    pattern,
    block_size,
    length,
    rows,
    columns,
    query_mask=None,
    key_mask=None,
    variables=None,
    **inputs,
):
    """The mask inside the tiles `(rows, columns)`, exactly.

    Args:
        pattern, block_size, length, query_mask, key_mask, variables,
            inputs: as for `grid`.
        rows: int32 `(P,)`, each tile's query tile numbered
            `b * Q + q` for example `b`.
        columns: int32 `(P,)`, its key tile `b * Q + k`.

    Returns:
        bool `(P, block, block)`; positions past `T` are hidden.
    """
    inputs = _checked(pattern, inputs)
    tiles = ops.shape(rows)[0]
    count = (length + block_size - 1) // block_size
    within = ops.arange(block_size, dtype="int32")
    query = ops.reshape((rows % count) * block_size, (-1, 1, 1)) + ops.reshape(
        within, (1, -1, 1)
    )
    key = ops.reshape((columns % count) * block_size, (-1, 1, 1)) + ops.reshape(
        within, (1, 1, -1)
    )
    example = rows // count

    def at_tiles(values, tile, shape, fill):
        """Per-position `values` `(B, T)` at the positions of each tile,
        `(P,) + shape`."""
        values = ops.pad(
            values,
            ((0, 0), (0, count * block_size - length)),
            constant_values=fill,
        )
        values = ops.reshape(values, (-1, block_size))
        return ops.reshape(ops.take(values, tile, axis=0), (tiles, *shape))

    at = {}
    for name in ("prefix_length", "span_length", "span_position"):
        if inputs.get(name) is not None:
            # `(B,)`, or one value for every example.
            value = ops.reshape(ops.cast(inputs[name], "int32"), (-1,))
            value = ops.take(value, example % ops.shape(value)[0], axis=0)
            at[name] = ops.reshape(value, (-1, 1, 1))
    if inputs.get("segment_ids") is not None:
        segments = ops.cast(inputs["segment_ids"], "int32")
        at["query_segments"] = at_tiles(segments, rows, (block_size, 1), -1)
        at["key_segments"] = at_tiles(segments, columns, (1, block_size), -1)
    visible = _visible(pattern, query, key, length, at, variables or {})
    visible = ops.logical_and(
        visible, ops.logical_and(query < length, key < length)
    )
    if query_mask is not None:
        padding = ops.cast(query_mask, "bool")
        visible = ops.logical_and(
            visible, at_tiles(padding, rows, (block_size, 1), False)
        )
    if key_mask is not None:
        padding = ops.cast(key_mask, "bool")
        visible = ops.logical_and(
            visible, at_tiles(padding, columns, (1, block_size), False)
        )
    return ops.broadcast_to(visible, (tiles, block_size, block_size))


def _checked(pattern, inputs):
    """The per-example `inputs` the pattern reads, as int32 tensors of the
    ranks `Pattern.mask` accepts (a `ValueError` naming any other)."""
    pattern.check_inputs(inputs)
    return {
        name: check_integer_tensor(
            name, value, ranks=(2,) if name == "segment_ids" else (0, 1)
        )
        for name, value in inputs.items()
        if value is not None
    }


def _parameter(word, name, variables):
    """A word's parameter: the variable a layer holds for it, or the int,
    as int32."""
    value = variables.get(word.variable_names()[name], getattr(word, name))
    return ops.cast(value, "int32")


def _visible(pattern, query, key, length, at, variables):
    """bool, broadcast from query positions `(P, block, 1)` and key
    positions `(P, 1, block)`: the pattern's rule, as `Pattern.mask`."""
    if isinstance(pattern, patterns.And | patterns.Or):
        combine = (
            ops.logical_and
            if isinstance(pattern, patterns.And)
            else ops.logical_or
        )
        result = None
        for part in pattern.patterns:
            mask = _visible(part, query, key, length, at, variables)
            result = mask if result is None else combine(result, mask)
        return result
    if isinstance(pattern, patterns.Not):
        return ops.logical_not(
            _visible(pattern.pattern, query, key, length, at, variables)
        )
    if isinstance(pattern, patterns.Causal):
        return ops.less_equal(key, query)
    if isinstance(pattern, patterns.Backward):
        return ops.greater_equal(key, query)
    if isinstance(pattern, patterns.Bidirectional):
        return ops.logical_and(
            ops.ones_like(query, dtype="bool"), ops.ones_like(key, "bool")
        )
    if isinstance(pattern, patterns.Window):
        left = _parameter(pattern, "left", variables)
        right = _parameter(pattern, "right", variables)
        return ops.logical_and(
            ops.greater_equal(key, query - left),
            ops.less_equal(key, query + right),
        )
    if isinstance(pattern, patterns.Segment):
        return ops.equal(at["query_segments"], at["key_segments"])
    start, end = _key_range(pattern, length, at, variables)
    in_range = ops.logical_and(
        ops.greater_equal(key, start), ops.less(key, end)
    )
    return ops.logical_and(in_range, ops.ones_like(query, dtype="bool"))


def _key_range(pattern, length, at, variables):
    """`[start, end)`: the keys every query sees under `prefix` or `span`
    (clipped as `masks.span_attention_mask` clips)."""
    if isinstance(pattern, patterns.Prefix):
        if pattern.length is None:
            return 0, at["prefix_length"]
        return 0, _parameter(pattern, "length", variables)
    if pattern.length is None:
        span_length, position = at["span_length"], at["span_position"]
    else:
        span_length = _parameter(pattern, "length", variables)
        position = _parameter(pattern, "position", variables)
    limit = ops.cast(length, "int32")
    start = ops.clip(position, 0, limit)
    return start, start + ops.clip(span_length, 0, limit)


class _Ranges:
    """What the words' bounds read: per tile, the first and last real
    positions of its queries `(1, Q, 1)` and keys `(1, 1, Q)`, the
    smallest and largest segment ids, and the per-example inputs
    `(B|1, 1, 1)`."""

    def __init__(self, block_size, length, variables, inputs):
        self.block_size = block_size
        self.length = ops.cast(length, "int32")
        self.count = (self.length + block_size - 1) // block_size
        first = ops.arange(self.count, dtype="int32") * block_size
        last = ops.minimum(first + block_size - 1, self.length - 1)
        self.query_first = ops.reshape(first, (1, -1, 1))
        self.query_last = ops.reshape(last, (1, -1, 1))
        self.key_first = ops.reshape(first, (1, 1, -1))
        self.key_last = ops.reshape(last, (1, 1, -1))
        self.variables = variables or {}
        self.inputs = {
            name: ops.reshape(ops.cast(value, "int32"), (-1, 1, 1))
            for name, value in inputs.items()
            if value is not None and name != "segment_ids"
        }
        self.segment_ids = inputs.get("segment_ids")
        self.segments = None

    def _tiled(self, values, fill):
        """`(B, Q, block)`: `values` `(B, T)` padded with `fill`."""
        values = ops.pad(
            values,
            ((0, 0), (0, self.count * self.block_size - self.length)),
            constant_values=fill,
        )
        return ops.reshape(values, (ops.shape(values)[0], -1, self.block_size))

    def summarize_segments(self, query_mask, key_mask):
        """The smallest and largest segment id of each tile's real
        positions (those not padding), for queries and keys."""
        if self.segment_ids is None:
            return
        segments = ops.cast(self.segment_ids, "int32")
        found = {}
        for side, token_mask in (("query", query_mask), ("key", key_mask)):
            low, high = segments, segments
            if token_mask is not None:
                token_mask = ops.cast(token_mask, "bool")
                low = ops.where(token_mask, segments, _INT_MAX)
                high = ops.where(token_mask, segments, -_INT_MAX)
            low = ops.min(self._tiled(low, _INT_MAX), axis=-1)
            high = ops.max(self._tiled(high, -_INT_MAX), axis=-1)
            axis = 2 if side == "query" else 1
            found[side] = (
                ops.expand_dims(low, axis),
                ops.expand_dims(high, axis),
            )
        self.segments = found

    def tokens(self, side, token_mask):
        """`(seen, whole)`: whether a tile's queries (or keys) include a
        real one, and whether all of its `block` positions are real."""
        first = self.query_first if side == "query" else self.key_first
        whole = first + self.block_size <= self.length
        if token_mask is None:
            return ops.ones_like(whole), whole
        tiled = self._tiled(ops.cast(token_mask, "bool"), False)
        seen, every = ops.any(tiled, axis=-1), ops.all(tiled, axis=-1)
        axis = 2 if side == "query" else 1
        return (
            ops.expand_dims(seen, axis),
            ops.logical_and(whole, ops.expand_dims(every, axis)),
        )


def _bounds(pattern, ranges):
    """`(some, every)` of one pattern, bool `(B|1, Q, Q)`."""
    if isinstance(pattern, patterns.And | patterns.Or):
        combine = (
            ops.logical_and
            if isinstance(pattern, patterns.And)
            else ops.logical_or
        )
        some, every = _bounds(pattern.patterns[0], ranges)
        for part in pattern.patterns[1:]:
            other_some, other_every = _bounds(part, ranges)
            some = combine(some, other_some)
            every = combine(every, other_every)
        return some, every
    if isinstance(pattern, patterns.Not):
        # A tile where some pair may be visible is one where not every
        # pair need be hidden, and the reverse.
        some, every = _bounds(pattern.pattern, ranges)
        return ops.logical_not(every), ops.logical_not(some)
    # `key - query` over a tile's pairs lies in [nearest, farthest].
    nearest = ranges.key_first - ranges.query_last
    farthest = ranges.key_last - ranges.query_first
    if isinstance(pattern, patterns.Causal):
        return nearest <= 0, farthest <= 0
    if isinstance(pattern, patterns.Backward):
        return farthest >= 0, nearest >= 0
    if isinstance(pattern, patterns.Bidirectional):
        every = ops.ones_like(nearest, dtype="bool")
        return every, every
    if isinstance(pattern, patterns.Window):
        left = _parameter(pattern, "left", ranges.variables)
        right = _parameter(pattern, "right", ranges.variables)
        return (
            ops.logical_and(nearest <= right, farthest >= -left),
            ops.logical_and(nearest >= -left, farthest <= right),
        )
    if isinstance(pattern, patterns.Segment):
        query_low, query_high = ranges.segments["query"]
        key_low, key_high = ranges.segments["key"]
        some = ops.logical_and(query_low <= key_high, key_low <= query_high)
        one = ops.logical_and(query_low == query_high, key_low == key_high)
        return some, ops.logical_and(one, query_low == key_low)
    start, end = _key_range(
        pattern, ranges.length, ranges.inputs, ranges.variables
    )
    some = ops.less(
        ops.maximum(ranges.key_first, start),
        ops.minimum(ranges.key_last + 1, end),
    )
    every = ops.logical_and(ranges.key_first >= start, ranges.key_last < end)
    return some, every
