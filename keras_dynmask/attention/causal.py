"""Causal self-attention that computes about half the scores.

On JAX and PyTorch the backend's causal kernel runs
(`keras.ops.dot_product_attention(is_causal=True)`: cuDNN's or PyTorch's
flash kernels skip the hidden half themselves). On TensorFlow, Keras'
kernel computes every score; here the queries are cut into `chunks`
consecutive pieces instead, each attending only to the keys up to its
last position, so that 8 chunks compute 9/16 of the `T x T` scores with
large matrix products and no gathering. The number of pieces is chosen
in the graph for the call's length (more for longer sequences), so the
same graph serves every length, in TFLite too.
"""

import keras
from keras import ops

from keras_dynmask.attention.softmax import per_position
from keras_dynmask.attention.softmax import softmax_attention

# (chunks, fewest blocks in the sequence for them), most chunks first:
# at T = 4,096 with blocks of 128, 8 chunks take 0.58x the time of one
# (benchmarks/attention.py); at T = 1,024, 4 chunks 0.8x; at T = 512 more
# than one chunk does not pay.
CHUNKS = ((8, 16), (4, 8))


def causal_attention(
    query_heads,
    key_heads,
    value_heads,
    key_mask=None,
    block_size=None,
    score=None,
):
    """Causal self-attention with padding.

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, T, N, H)`, the same positions, of
            one head size.
        key_mask: bool `(B, T)` or `None`.
        block_size: int > 0 or `None`. On TensorFlow, the queries are cut
            into 8 chunks from `16 * block_size` positions on, 4 from
            `8 * block_size`; `None`: never (one `T x T` kernel call).
        score: a `core.scores.Scoring`, on TensorFlow only (each piece is
            modified at its own positions, by `softmax_attention`: fused
            with the modifiers' bias when they only add one in float32,
            written out otherwise), or `None`.

    Returns:
        `(attended (B, T, N, H), has_key (B, T) or None)`: a query whose
        keys so far are all padding gets zeros.
    """
    if key_mask is None:
        has_key = None
    else:
        key_mask = ops.cast(key_mask, "bool")
        has_key = ops.greater(ops.cumsum(ops.cast(key_mask, "int32"), 1), 0)
    if score is not None and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "causal_attention takes score modifiers on TensorFlow only "
            f"(the backends' causal kernels take none), received score="
            f"{score.modifiers!r} on {keras.backend.backend()}"
        )
    if keras.backend.backend() != "tensorflow":
        attended = ops.dot_product_attention(
            query_heads,
            key_heads,
            value_heads,
            mask=None if key_mask is None else _per_query_key(key_mask),
            scale=1.0,
            is_causal=True,
        )
    elif block_size is None:
        attended = _chunked(
            query_heads, key_heads, value_heads, key_mask, 1, score
        )
    else:
        attended = _by_length(
            (query_heads, key_heads, value_heads), key_mask, block_size, score
        )
    if has_key is not None:
        attended = ops.where(per_position(has_key), attended, 0.0)
    return attended, has_key


def _by_length(heads, key_mask, block_size, score, choices=CHUNKS):
    """`_chunked` with the first of `choices` this call's length reaches
    (decided when tracing if the length is known then, else in the
    graph), else in one piece."""
    if not choices:
        return _chunked(*heads, key_mask, 1, score)
    (chunks, blocks), rest = choices[0], choices[1:]
    length = heads[0].shape[1]
    if isinstance(length, int):  # known when tracing: no `cond`
        if length >= blocks * block_size:
            return _chunked(*heads, key_mask, chunks, score)
        return _by_length(heads, key_mask, block_size, score, rest)
    return ops.cond(
        ops.shape(heads[0])[1] >= blocks * block_size,
        lambda: _chunked(*heads, key_mask, chunks, score),
        lambda: _by_length(heads, key_mask, block_size, score, rest),
    )


def _chunked(query_heads, key_heads, value_heads, key_mask, chunks, score):
    """Causal attention of `chunks` consecutive pieces of the queries,
    each over the keys up to its last position (the last piece takes the
    remainder; needs a length of at least `chunks`), modified at the
    piece's positions."""
    length = ops.shape(query_heads)[1]
    size = length // chunks
    pieces = []
    for index in range(chunks):
        start = index * size
        stop = length if index == chunks - 1 else start + size
        # The keys before the piece are all visible, its own a triangle.
        mask = ops.tril(ops.ones((stop - start, stop - start), "bool"))
        if index > 0:
            before = ops.ones((stop - start, start), "bool")
            mask = ops.concatenate([before, mask], axis=1)
        mask = ops.expand_dims(ops.expand_dims(mask, 0), 0)
        if key_mask is not None:
            mask = ops.logical_and(mask, _per_key(key_mask[:, :stop]))
        heads = (
            query_heads[:, start:stop],
            key_heads[:, :stop],
            value_heads[:, :stop],
        )
        if score is None:
            piece = ops.dot_product_attention(*heads, mask=mask, scale=1.0)
        else:
            placed = score.at(
                ops.arange(start, stop, dtype="int32"),
                ops.arange(stop, dtype="int32"),
            )
            piece, _, _ = softmax_attention(
                *heads, mask, weights=False, score=placed
            )
        pieces.append(piece)
    return pieces[0] if chunks == 1 else ops.concatenate(pieces, axis=1)


def _per_key(key_mask):
    """bool `(B, 1, 1, S)` from `(B, S)`."""
    return ops.expand_dims(ops.expand_dims(key_mask, 1), 1)


def _per_query_key(key_mask):
    """bool `(B, 1, T, S)` from `(B, S)`: under JAX, cuDNN's fused
    attention takes a mask only as long as the queries (a shorter one
    falls back to XLA, with an error logged)."""
    mask = _per_key(key_mask)
    if keras.backend.backend() != "jax":
        return mask
    batch, length = ops.shape(key_mask)
    return ops.broadcast_to(mask, (batch, 1, length, length))
