"""Masked softmax attention: the arithmetic both attention paths share."""

from keras import ops

# Softmax runs in float32 whatever the compute dtype, so this stays finite
# (a -1e9 cast to float16 would be -inf, then NaN).
MASKED_SCORE = -1e9


def softmax_attention(query_heads, key_heads, value_heads, mask, dropout=None):
    """Softmax attention of every query over every key it is given.

    Scores are normalized in float32 whatever the compute dtype; a query
    whose keys are all hidden gets zero weights (not a uniform row).

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, S, N, H)`.
        mask: bool `(B|1, T, S)`, `(B|1, N|1, T, S)` (per head) or
            `None`.
        dropout: callable on the weights, or `None`.

    Returns:
        `(attended (B, T, N, H), has_key (B, T) or None, weights
        (B, N, T, S))`.
    """
    # (B, N, T, S), normalized in float32 for every compute dtype.
    scores = ops.cast(
        ops.einsum("bsnh,btnh->bnts", key_heads, query_heads), "float32"
    )
    if mask is not None:
        head_mask = mask if len(mask.shape) == 4 else ops.expand_dims(mask, 1)
        scores = ops.where(head_mask, scores, MASKED_SCORE)
    if scores.shape[-1] == 1:
        # One key: its weight is 1 (Keras warns on a softmax of size 1).
        weights = ops.ones_like(scores)
    else:
        weights = ops.softmax(scores, axis=-1)
    if mask is not None:
        # A row whose keys are all hidden would otherwise be uniform.
        weights = ops.where(head_mask, weights, 0.0)
    weights = ops.cast(weights, value_heads.dtype)
    dropped = weights if dropout is None else dropout(weights)
    attended = ops.einsum("bnts,bsnh->btnh", dropped, value_heads)
    return attended, rows_with_keys(mask, query_heads), weights


def rows_with_keys(mask, query_heads):
    """bool `(B, T)`: the queries that see a key in some head, or `None`
    when `mask` is `None` (every query sees every key)."""
    if mask is None:
        return None
    if len(mask.shape) == 4:
        mask = ops.any(mask, axis=1)
    return ops.broadcast_to(
        ops.any(mask, axis=-1),
        (ops.shape(query_heads)[0], ops.shape(query_heads)[1]),
    )
