"""Attention over only the blocks of a mask that hold a visible key.

FlexAttention's `BlockMask` idea in `keras.ops`: the `(T, S)` mask of
each example is cut into `block_size x block_size` tiles; a tile with no
visible key is skipped, so a causal mask computes about half the scores,
and 8 packed documents in one row about an eighth. The tiles kept are
listed at run time (from this batch's mask: its pattern, padding and
per-example inputs), their queries, keys and values gathered, and the
softmax of each query row is assembled across its tiles with segment
reductions (a running maximum, then sums), so that it equals the dense
softmax to float rounding.

The list of tiles has a length known only when running, which TensorFlow
(and TFLite) have and JAX's compiler does not: like `blockwise`, this is
for the TensorFlow backend (`available()`).
"""

from keras import ops

from keras_dynmask.attention.blockwise import available  # noqa: F401
from keras_dynmask.attention.softmax import MASKED_SCORE


def kept_tiles(mask, block_size):
    """bool `(B, Q, K)`: which `block_size x block_size` tiles of `mask`
    `(B, T, S)` hold a visible key (the last ones padded)."""
    return ops.any(_padded(mask, block_size), axis=(2, 4))


def _padded(mask, block_size):
    """`mask` padded to whole tiles, `(B, Q, block, K, block)`."""
    batch = ops.shape(mask)[0]
    length, keys = ops.shape(mask)[1], ops.shape(mask)[2]
    query_tiles = (length + block_size - 1) // block_size
    key_tiles = (keys + block_size - 1) // block_size
    mask = ops.pad(
        mask,
        (
            (0, 0),
            (0, query_tiles * block_size - length),
            (0, key_tiles * block_size - keys),
        ),
    )
    return ops.reshape(
        mask, (batch, query_tiles, block_size, key_tiles, block_size)
    )


def tiles(mask, block_size, kept=None):
    """The tiles of `mask` that hold a visible key.

    Args:
        mask: bool `(B, T, S)`.
        block_size: int > 0.
        kept: `kept_tiles(mask, block_size)` when already computed.

    Returns:
        `(rows, columns, blocks, padded)`: int32 `(P,)` the query tile of
        each kept tile, numbered `b * rows_per_example + q` (so in
        increasing order); int32 `(P,)` its key tile `b * columns + k`;
        bool `(P, block, block)` the mask inside it; and the padded mask's
        tile counts `(query tiles, key tiles)` per example.
    """
    if kept is None:
        kept = kept_tiles(mask, block_size)
    query_tiles, key_tiles = ops.shape(kept)[1], ops.shape(kept)[2]
    flat = _true_indices(ops.reshape(kept, (-1,)))  # b * Q * K + q * K + k
    rows = flat // key_tiles  # b * Q + q
    example = rows // query_tiles
    columns = example * key_tiles + flat % key_tiles
    grid = ops.transpose(_padded(mask, block_size), (0, 1, 3, 2, 4))
    blocks = ops.take(
        ops.reshape(grid, (-1, block_size, block_size)), flat, axis=0
    )
    return rows, columns, blocks, (query_tiles, key_tiles)


def _true_indices(flags):
    """int32 `(P,)`: where the bool vector `flags` is `True`, in order (a
    cumulative sum and a scatter: `nonzero` would unstack int64 indices,
    which TFLite's builtins cannot)."""
    flags = ops.cast(flags, "int32")
    count = ops.sum(flags)
    slot = ops.where(flags > 0, ops.cumsum(flags) - 1, count)
    found = ops.scatter(
        ops.expand_dims(slot, 1),
        ops.arange(ops.shape(flags)[0], dtype="int32") * flags,
        ops.expand_dims(count + 1, 0),
    )
    return found[:count]


def attention(
    query_heads,
    key_heads,
    value_heads,
    mask,
    block_size,
    dropout=None,
    kept=None,
):
    """Masked softmax attention computed over the kept tiles only.

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, S, N, H)` (keys and values may have
            different head sizes).
        mask: bool `(B|1, T, S)`.
        block_size: int > 0.
        dropout: callable on the (unnormalized) weights, or `None`.
        kept: `kept_tiles(mask, block_size)` when already computed.

    Returns:
        `(attended (B, T, N, H) in the value dtype, has_key (B, T))`: a
        query with no visible key gets zeros.
    """
    batch = ops.shape(query_heads)[0]
    length, keys = ops.shape(query_heads)[1], ops.shape(key_heads)[1]
    heads = query_heads.shape[2]
    value_size = value_heads.shape[3]
    mask = ops.broadcast_to(ops.cast(mask, "bool"), (batch, length, keys))
    rows, columns, blocks, (query_tiles, key_tiles) = tiles(
        mask, block_size, kept
    )

    def tiled(x, count, size):
        x = ops.pad(x, ((0, 0), (0, count * block_size - size), (0, 0), (0, 0)))
        return ops.reshape(x, (-1, block_size, *x.shape[2:]))

    query_blocks = ops.take(tiled(query_heads, query_tiles, length), rows, 0)
    key_blocks = ops.take(tiled(key_heads, key_tiles, keys), columns, 0)
    value_blocks = ops.take(tiled(value_heads, key_tiles, keys), columns, 0)

    # (P, N, block, block) scores in float32, hidden keys at MASKED_SCORE.
    inside = ops.expand_dims(blocks, 1)
    scores = ops.cast(
        ops.einsum("pqnh,pknh->pnqk", query_blocks, key_blocks), "float32"
    )
    scores = ops.where(inside, scores, MASKED_SCORE)
    # The softmax of a query row spans its tiles: the row's maximum over
    # all of them first, then exponentials and sums gathered per row.
    segments = batch * query_tiles
    row_max = ops.segment_max(
        # `initial`: no tile kept is an empty max, which is no error.
        ops.max(scores, axis=-1, initial=MASKED_SCORE),
        rows,
        num_segments=segments,
    )
    weights = ops.exp(scores - ops.expand_dims(ops.take(row_max, rows, 0), -1))
    weights = ops.where(inside, weights, 0.0)
    total = ops.segment_sum(
        ops.sum(weights, axis=-1), rows, num_segments=segments
    )  # (B * Q, N, block)
    if dropout is not None:
        weights = dropout(weights)
    partial = ops.einsum(
        "pnqk,pknh->pqnh", ops.cast(weights, value_heads.dtype), value_blocks
    )
    summed = ops.segment_sum(
        ops.cast(partial, "float32"), rows, num_segments=segments
    )  # (B * Q, block, N, H)
    total = ops.expand_dims(ops.transpose(total, (0, 2, 1)), -1)
    attended = ops.where(
        total > 0, summed / ops.where(total > 0, total, 1.0), 0.0
    )
    attended = ops.reshape(
        ops.cast(attended, value_heads.dtype),
        (batch, query_tiles * block_size, heads, value_size),
    )[:, :length]
    return attended, ops.any(mask, axis=-1)
