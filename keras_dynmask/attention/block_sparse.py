"""Attention over only the blocks of a mask that hold a visible key.

FlexAttention's `BlockMask` idea in `keras.ops`: the `(T, S)` mask of
each example is cut into `block_size x block_size` tiles; a tile with no
visible key is skipped (a causal mask computes about half the scores, 8
packed documents in one row about an eighth), and a tile where every
query sees every key is computed without an element mask. Which tiles are
which is known at run time: from this batch's pattern, padding and
per-example inputs (`tile_mask`, without the `(T, S)` mask) or from a
mask given whole (`from_mask`). The kept tiles' queries, keys and values
are gathered, and the softmax of each query row is assembled across its
tiles with segment reductions (a running maximum, then sums), so that it
equals the dense softmax to float rounding.

The list of tiles has a length known only when running, which TensorFlow
(and TFLite) have and JAX's compiler does not: this is for the TensorFlow
backend (`available()`). Under XLA on TensorFlow it still runs and equals
the dense path (XLA bounds the list by the whole grid).
"""

import keras
from keras import ops

from keras_dynmask.attention.softmax import MASKED_SCORE


def available():
    """Whether the backend runs block-sparse attention (TensorFlow)."""
    return keras.backend.backend() == "tensorflow"


def from_mask(mask, block_size):
    """The tiles of a whole mask, as `attention` takes them.

    Args:
        mask: bool `(B, T, S)`.
        block_size: int > 0.

    Returns:
        `(some, every, inside)`: bool `(B, Q, K)` whether a tile holds a
        visible key; bool `(B, Q, K)` whether every query of it sees every
        key (positions past `T` or `S` count as hidden); and
        `inside(rows, columns)`, the mask inside tiles (see `attention`).
    """
    grid = _padded(ops.cast(mask, "bool"), block_size)
    some, every = ops.any(grid, axis=(2, 4)), ops.all(grid, axis=(2, 4))
    key_tiles = ops.shape(grid)[3]
    tiles = ops.reshape(
        ops.transpose(grid, (0, 1, 3, 2, 4)), (-1, block_size, block_size)
    )

    def inside(rows, columns):
        # Tile (b, q, k) is entry (b * Q + q) * K + k.
        return ops.take(tiles, rows * key_tiles + columns % key_tiles, axis=0)

    return some, every, inside


def _padded(mask, block_size):
    """`mask` padded with `False` to whole tiles, `(B, Q, block, K, block)`."""
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


def tile_indices(flags):
    """`(rows, columns)`: int32 `(P,)` each, the tiles where the bool
    `(B, Q, K)` `flags` hold, in order; a tile's row is `b * Q + q` and its
    column `b * K + k`."""
    query_tiles, key_tiles = ops.shape(flags)[1], ops.shape(flags)[2]
    flat = _true_indices(ops.reshape(flags, (-1,)))  # b * Q * K + q * K + k
    rows = flat // key_tiles
    columns = (rows // query_tiles) * key_tiles + flat % key_tiles
    return rows, columns


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
    block_size,
    some,
    every=None,
    inside=None,
    dropout=None,
    score=None,
):
    """Masked softmax attention computed over the kept tiles only.

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, S, N, H)` (keys and values may have
            different head sizes).
        block_size: int > 0.
        some: bool `(B|1, Q, K)`, `Q = ceil(T / block)` and
            `K = ceil(S / block)`: the tiles that may hold a visible key;
            the others are skipped.
        every: bool `(B|1, Q, K)` or `None`: tiles where every query sees
            every key, computed without an element mask.
        inside: `inside(rows, columns)` gives bool `(P, block, block)`, the
            mask inside the tiles `rows` (int32 `(P,)`, `b * Q + q`) and
            `columns` (`b * K + k`), positions past `T` or `S` hidden;
            `None` only when every kept tile is full.
        dropout: callable on the (unnormalized) weights, or `None`.
        score: a `core.scores.Scoring`, placed here at each tile's
            positions (queries and keys from 0), or `None`.

    Returns:
        `(attended (B, T, N, H) in the value dtype, has_key (B, T))`: a
        query with no visible key gets zeros.
    """
    batch = ops.shape(query_heads)[0]
    length, keys = ops.shape(query_heads)[1], ops.shape(key_heads)[1]
    heads = query_heads.shape[2]
    value_size = value_heads.shape[3]
    query_tiles = (length + block_size - 1) // block_size
    key_tiles = (keys + block_size - 1) // block_size
    shape = (batch, query_tiles, key_tiles)
    some = ops.broadcast_to(ops.cast(some, "bool"), shape)
    groups = [(some, inside)]
    if every is not None:
        every = ops.logical_and(some, ops.cast(every, "bool"))
        groups = [
            (every, None),
            (ops.logical_and(some, ops.logical_not(every)), inside),
        ]

    def tiled(x, count, size):
        x = ops.pad(x, ((0, 0), (0, count * block_size - size), (0, 0), (0, 0)))
        return ops.reshape(x, (-1, block_size, *x.shape[2:]))

    query_tiled = tiled(query_heads, query_tiles, length)
    key_tiled = tiled(key_heads, key_tiles, keys)
    value_tiled = tiled(value_heads, key_tiles, keys)

    # Each group (full tiles, then the others): its tiles' rows and
    # columns and (P, N, block, block) float32 scores, hidden keys at
    # MASKED_SCORE.
    found = []
    for flags, mask_of in groups:
        rows, columns = tile_indices(flags)
        scores = ops.cast(
            ops.einsum(
                "pqnh,pknh->pnqk",
                ops.take(query_tiled, rows, axis=0),
                ops.take(key_tiled, columns, axis=0),
            ),
            "float32",
        )
        if score is not None:
            within = ops.arange(block_size, dtype="int32")
            scores = score.at(
                ops.expand_dims(rows % query_tiles, 1) * block_size + within,
                ops.expand_dims(columns % key_tiles, 1) * block_size + within,
                rows // query_tiles,
            )(scores)
        if mask_of is not None:
            visible = ops.expand_dims(mask_of(rows, columns), 1)
            scores = ops.where(visible, scores, MASKED_SCORE)
        found.append((rows, columns, scores))
    every_row = ops.concatenate([rows for rows, _, _ in found], axis=0)

    # The softmax of a query row spans its tiles: the row's maximum over
    # all of them first, then exponentials and sums gathered per row.
    segments = batch * query_tiles
    row_max = ops.segment_max(
        ops.concatenate(
            [ops.max(s, axis=-1, initial=MASKED_SCORE) for _, _, s in found],
            axis=0,
        ),
        every_row,
        num_segments=segments,
    )  # (B * Q, N, block); rows with no tile kept: the lowest float
    sums, parts = [], []
    for rows, columns, scores in found:
        # A hidden key's weight is 0 in a row that sees a key; rows that
        # see none are set to zero at the end.
        weights = ops.exp(
            scores - ops.expand_dims(ops.take(row_max, rows, axis=0), -1)
        )
        sums.append(ops.sum(weights, axis=-1))
        if dropout is not None:
            weights = dropout(weights)
        part = ops.einsum(
            "pnqk,pknh->pqnh",
            ops.cast(weights, value_heads.dtype),
            ops.take(value_tiled, columns, axis=0),
        )
        parts.append(ops.cast(part, "float32"))
    total = ops.segment_sum(
        ops.concatenate(sums, axis=0), every_row, num_segments=segments
    )  # (B * Q, N, block)
    summed = ops.segment_sum(
        ops.concatenate(parts, axis=0), every_row, num_segments=segments
    )  # (B * Q, block, N, H)
    # The mask is the same for every head: head 0 says which rows see a key.
    has_key = row_max[:, 0] > MASKED_SCORE / 2  # (B * Q, block)
    total = ops.expand_dims(ops.transpose(total, (0, 2, 1)), -1)
    usable = ops.logical_and(
        ops.reshape(has_key, (-1, block_size, 1, 1)), total > 0
    )
    # One pass over the (B * Q, block, N, H) sums: their scale per row.
    attended = summed * ops.where(
        usable, 1.0 / ops.where(usable, total, 1.0), 0.0
    )
    attended = ops.reshape(
        ops.cast(attended, value_heads.dtype),
        (batch, query_tiles * block_size, heads, value_size),
    )[:, :length]
    has_key = ops.reshape(has_key, (batch, query_tiles * block_size))
    return attended, has_key[:, :length]
