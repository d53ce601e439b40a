"""Attention computed block by block over only the keys a window can reach.

With a sliding window (alone or with causal, backward, segment and padding
masks), query `i` can only see keys in `[i - left, i + right]`. The
sequence is cut into blocks of `block_size` queries; each block attends to
the `W = ceil(left / block) + ceil(right / block) + 1` blocks of keys
around it, gathered into one tensor, so scores take
`T x W x block_size` memory and time instead of `T x T`. The pattern is
evaluated inside each block with the same functions as the dense mask (a
window is the same at every position, so a block's queries sit at
`ceil(left / block) * block` relative to its first gathered key), and the
softmax is the dense path's (`softmax_attention`), so the results agree
to float rounding.

Window sizes may be variables. On TensorFlow (and in its SavedModel and
TFLite exports) the number of gathered blocks is computed in the graph
from their current values: shapes known only when running. JAX's compiler
needs every shape when tracing, so there (and on PyTorch, alike) the
number comes from the pattern's own bounds, as written (`static_blocks`),
and a layer takes this path only while its variables stay within them.
"""

import keras
from keras import ops

from keras_dynmask.attention.softmax import softmax_attention
from keras_dynmask.core import patterns

# Leaves whose rule depends only on `key - query` (or on segment ids that
# are gathered with the keys): a block can evaluate them relative to its
# own first key.
_BLOCKWISE_LEAVES = (
    patterns.Causal,
    patterns.Backward,
    patterns.Bidirectional,
    patterns.Window,
    patterns.Segment,
)


def band(pattern, variables=None):
    """How far the keys a pattern allows can lie from their query.

    Args:
        pattern: a `Pattern`.
        variables: `{name: variable}` as in `Pattern.mask`.

    Returns:
        `(left, right)`, ints or scalar tensors, such that no query `i`
        sees a key outside `[i - left, i + right]`; `None` for a side with
        no bound.
    """
    variables = variables or {}
    if isinstance(pattern, patterns.Window):
        names = pattern.variable_names()
        return (
            variables.get(names["left"], pattern.left),
            variables.get(names["right"], pattern.right),
        )
    if isinstance(pattern, patterns.Causal):
        return None, 0
    if isinstance(pattern, patterns.Backward):
        return 0, None
    if isinstance(pattern, patterns.And):
        sides = [band(p, variables) for p in pattern.patterns]
        return _tightest(s[0] for s in sides), _tightest(s[1] for s in sides)
    if isinstance(pattern, patterns.Or):
        sides = [band(p, variables) for p in pattern.patterns]
        return _widest(s[0] for s in sides), _widest(s[1] for s in sides)
    return None, None


def _tightest(bounds):
    found = [b for b in bounds if b is not None]
    if not found:
        return None
    if all(isinstance(b, int) for b in found):
        return min(found)
    result = found[0]
    for bound in found[1:]:
        result = ops.minimum(result, bound)
    return result


def _widest(bounds):
    bounds = list(bounds)
    if any(b is None for b in bounds):
        return None
    if all(isinstance(b, int) for b in bounds):
        return max(bounds)
    result = bounds[0]
    for bound in bounds[1:]:
        result = ops.maximum(result, bound)
    return result


def supports(pattern):
    """Whether `pattern` can be computed block-wise: made only of
    position-relative leaves and segments, with a bounded band."""
    if not all(
        isinstance(leaf, _BLOCKWISE_LEAVES) for leaf in pattern.leaves()
    ):
        return False
    left, right = band(pattern)
    return left is not None and right is not None


def key_blocks(pattern, variables, block_size):
    """`(before, after)`: blocks of keys each query block needs on each
    side (int32 scalars)."""
    left, right = band(pattern, variables)
    return (
        _blocks(ops.maximum(left, 0), block_size),
        _blocks(ops.maximum(right, 0), block_size),
    )


def static_blocks(pattern, block_size):
    """`(before, after)` as Python ints, from the pattern's bounds as
    written (not its variables' values)."""
    left, right = band(pattern)
    return (
        -(-max(int(left), 0) // block_size),
        -(-max(int(right), 0) // block_size),
    )


def _blocks(reach, block_size):
    reach = ops.cast(reach, "int32")
    return (reach + block_size - 1) // block_size


def attention(
    query_heads,
    key_heads,
    value_heads,
    pattern,
    block_size,
    variables=None,
    query_mask=None,
    key_mask=None,
    segment_ids=None,
    dropout=None,
    blocks=None,
    score=None,
):
    """Masked self-attention, block by block.

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, T, N, H)`, the same positions.
        pattern: a `Pattern` for which `supports(pattern)` holds.
        block_size: int > 0.
        variables: the pattern's variables (see `Pattern.mask`).
        query_mask, key_mask: bool `(B, T)` or `None`.
        segment_ids: int `(B, T)` when the pattern has `segment`.
        dropout: callable on the weights, or `None`.
        blocks: `(before, after)` key blocks to gather on each side, at
            least what the pattern needs (`static_blocks`: Python ints, so
            that every shape is known when tracing); by default computed
            from `variables`.
        score: a `core.scores.Scoring`, placed here at each block's
            positions, or `None`.

    Returns:
        `(attended, has_key)`: `(B, T, N, H)` in the value dtype, and bool
        `(B, T)`, whether each query sees at least one key.
    """
    batch, length = ops.shape(query_heads)[0], ops.shape(query_heads)[1]
    heads = query_heads.shape[2]
    value_size = value_heads.shape[3]
    before, after = blocks or key_blocks(pattern, variables, block_size)
    width = (before + after + 1) * block_size  # keys gathered per block
    count = (length + block_size - 1) // block_size
    padded = count * block_size
    tail = padded - length

    # Keys of block q: padded positions [q * block, q * block + width),
    # which are absolute positions shifted by `before * block`.
    starts = ops.arange(count, dtype="int32") * block_size
    gather = ops.expand_dims(starts, 1) + ops.arange(width, dtype="int32")
    key_positions = gather - before * block_size
    in_sequence = ops.logical_and(key_positions >= 0, key_positions < length)

    def queries(x, fill):
        x = _pad(x, 0, tail, fill)
        return ops.reshape(x, (batch * count, block_size, *x.shape[2:]))

    def keys(x, fill):
        x = _pad(x, before * block_size, tail + after * block_size, fill)
        x = ops.take(x, gather, axis=1)  # (B, count, width, ...)
        return ops.reshape(x, (batch * count, width, *x.shape[3:]))

    inputs = {}
    if segment_ids is not None:
        inputs["segment_ids"] = queries(segment_ids, -1)
        inputs["key_segment_ids"] = keys(segment_ids, -1)
    mask = pattern.mask(
        block_size, width, before * block_size, variables=variables, **inputs
    )
    valid = ops.reshape(
        ops.broadcast_to(
            ops.expand_dims(in_sequence, 0), (batch, count, width)
        ),
        (batch * count, 1, width),
    )
    mask = ops.logical_and(mask, valid)
    if query_mask is not None:
        mask = ops.logical_and(
            mask,
            ops.expand_dims(queries(ops.cast(query_mask, "bool"), False), 2),
        )
    if key_mask is not None:
        mask = ops.logical_and(
            mask, ops.expand_dims(keys(ops.cast(key_mask, "bool"), False), 1)
        )

    query_blocks = queries(query_heads, 0)
    key_block = keys(key_heads, 0)
    value_block = keys(value_heads, 0)
    if score is not None:
        query_positions = ops.expand_dims(starts, 1) + ops.arange(
            block_size, dtype="int32"
        )
        score = score.at(
            _per_block(query_positions, batch),
            _per_block(key_positions, batch),
            # The example each block row belongs to.
            ops.repeat(ops.arange(batch, dtype="int32"), count),
        )
    attended, _, _ = softmax_attention(
        query_blocks,
        key_block,
        value_block,
        mask,
        dropout,
        weights=False,
        score=score,
    )
    attended = ops.reshape(attended, (batch, padded, heads, value_size))
    has_key = ops.reshape(ops.any(mask, axis=-1), (batch, padded))
    return attended[:, :length], has_key[:, :length]


def _per_block(positions, batch):
    """`(B * count, n)` from the `(count, n)` positions of each block."""
    count, size = ops.shape(positions)[0], ops.shape(positions)[1]
    positions = ops.broadcast_to(
        ops.expand_dims(positions, 0), (batch, count, size)
    )
    return ops.reshape(positions, (batch * count, size))


def _pad(x, before, after, fill):
    """`x` with `before` and `after` entries of `fill` on axis 1."""

    def block(count):
        shape = (ops.shape(x)[0], count, *ops.shape(x)[2:])
        return ops.full(shape, fill, dtype=x.dtype)

    return ops.concatenate([block(before), x, block(after)], axis=1)


def available():
    """Whether the key blocks gathered may be those a window's variables
    reach in this call: shapes known only when running, which TensorFlow's
    ops have. XLA (`jit_compile=True`, as Keras' `fit` and `predict` on a
    GPU) fixes every shape when compiling, as JAX does: there the blocks
    are the pattern's bounds as written (`static_blocks`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.__internal__.get_enclosing_xla_context() is None
