"""Masked softmax attention: the arithmetic both attention paths share."""

import keras
from keras import ops

# Softmax runs in float32 whatever the compute dtype, so this stays finite
# (a -1e9 cast to float16 would be -inf, then NaN).
MASKED_SCORE = -1e9


def softmax_attention(
    query_heads,
    key_heads,
    value_heads,
    mask,
    dropout=None,
    weights=True,
    score=None,
):
    """Softmax attention of every query over every key it is given.

    Scores are normalized in float32 whatever the compute dtype; a query
    whose keys are all hidden gets zero weights (not a uniform row) and a
    zero output. Score modifiers change the float32 scores before the
    mask hides keys.

    Without dropout and weights, and with keys and values of one head
    size, this is Keras' fused
    `keras.ops.dot_product_attention` (the same kernel stock Keras layers
    use: XLA-fusable; on JAX, cuDNN or a TPU's kernel where the backend
    picks one), whose rows without a key are then set to zero; otherwise
    the steps are written out here. Modifiers that only add a bias (ALiBi,
    a relative bias) stay on the fused kernel, given as its `bias`, when
    the compute dtype is float32; others (a soft cap, a function), and any
    modifier under float16 or bfloat16 (where the kernel would add the
    bias in that precision: an ALiBi bias of -500.5 is -500 in bfloat16),
    take the written-out steps. On TensorFlow (whose kernel writes its
    steps out too), ALiBi under a causal pattern (`Scoring.folded`) is one
    more feature of each query and key head instead: its bias comes with
    the scores' product; under other patterns the queries are divided by
    their head's slope (`_divided_scores`).

    The written-out scores are the product of the queries by the keys,
    in that order: TensorFlow's einsum took 3x as long for the keys by
    the queries (stock Keras' order) at T = 4,096 on a CPU.

    Args:
        query_heads: `(B, T, N, H)`, already scaled.
        key_heads, value_heads: `(B, S, N, H)`.
        mask: bool `(B|1, T, S)`, `(B|1, N|1, T, S)` (per head) or
            `None`.
        dropout: callable on the weights, or `None`.
        weights: bool. Whether the weights are wanted.
        score: a placed `core.scores.Scoring` (`Scoring.at`), or `None`.

    Returns:
        `(attended (B, T, N, H), has_key (B, T) or None, weights
        (B, N, T, S) or None)`.
    """
    has_key = rows_with_keys(mask, query_heads)
    wanted = weights
    # Keras' fused path under JAX needs one head size for keys and values.
    same_sizes = key_heads.shape[-1] == value_heads.shape[-1]
    if score is not None and keras.backend.backend() == "tensorflow":
        # ALiBi under a causal pattern rides in the scores' product (on
        # TensorFlow, whose kernel takes queries and keys longer than the
        # values).
        folded = score.folded(query_heads, key_heads)
        if folded is not None:
            query_heads, key_heads, score = folded
    float32 = keras.backend.standardize_dtype(query_heads.dtype) == "float32"
    divided = _divisible(score, query_heads)
    # TensorFlow's kernel writes its steps out too: ALiBi costs less
    # divided (`_divided_scores`) than as its bias.
    fused = (score is None or (score.additive and float32)) and not divided
    if dropout is None and not wanted and same_sizes and fused:
        mask = None if mask is None else _spelled_out(mask, query_heads)
        bias = None
        if score is not None:
            bias = score.bias(query_heads.shape[2])
            if mask is not None and keras.backend.backend() == "torch":
                # PyTorch's kernel takes a bias or a mask, not both.
                bias, mask = ops.where(mask, bias, MASKED_SCORE), None
        attended = ops.dot_product_attention(
            query_heads,
            key_heads,
            value_heads,
            bias=bias,
            mask=mask,
            scale=1.0,
        )
        if has_key is not None:
            attended = ops.where(per_position(has_key), attended, 0.0)
        return attended, has_key, None
    # (B, N, T, S), normalized in float32 for every compute dtype.
    scores, masked = _modified_scores(
        query_heads, key_heads, score, mask, divided
    )
    if mask is not None:
        head_mask = _per_head(mask)
        if not masked:
            scores = ops.where(head_mask, scores, MASKED_SCORE)
    if scores.shape[-1] == 1:
        # One key: its weight is 1 (Keras warns on a softmax of size 1).
        weights = ops.ones_like(scores)
    else:
        weights = ops.softmax(scores, axis=-1)
    if mask is not None and wanted:
        # A row whose keys are all hidden would otherwise be uniform.
        weights = ops.where(head_mask, weights, 0.0)
    weights = ops.cast(weights, value_heads.dtype)
    dropped = weights if dropout is None else dropout(weights)
    attended = ops.einsum("bnts,bsnh->btnh", dropped, value_heads)
    if has_key is not None and not wanted:
        # Cheaper than zeroing such rows' weights: one (B, T, N, H) pass.
        attended = ops.where(per_position(has_key), attended, 0.0)
    return attended, has_key, weights if wanted else None


def _divisible(score, query_heads):
    """`score.divided(...)` where `_divided_scores` serves, else `None`:
    a first modifier that is not additive (a soft cap) is written out on
    every path; an additive one (ALiBi) costs less divided only on
    TensorFlow (elsewhere the kernel takes its bias fused), and only in
    float32 (queries divided by a slope of 2**-8 in float16 could
    overflow)."""
    if score is None:
        return None
    bias_too = (
        keras.backend.backend() == "tensorflow"
        and keras.backend.standardize_dtype(query_heads.dtype) == "float32"
    )
    return score.divided(query_heads.shape[2], MASKED_SCORE, bias_too)


def _modified_scores(query_heads, key_heads, score, mask, divided):
    """`(scores, masked)`: the float32 scores `(B, N, T, S)` modified by
    `score` (placed, or `None`; `divided` is `_divisible(score, ...)`),
    and whether `mask` (or `None`) is in them already (hidden keys at
    `MASKED_SCORE` or below)."""
    if divided is not None:
        return _divided_scores(query_heads, key_heads, mask, *divided)
    scores = ops.cast(
        ops.einsum("btnh,bsnh->bnts", query_heads, key_heads), "float32"
    )
    if score is not None:
        scores = score(scores)
    return scores, False


def _divided_scores(
    query_heads, key_heads, mask, divisors, table, finish, rest, hidden
):
    """`_modified_scores` where the first modifier is `finish(scores /
    divisor[h] + table)` (`Scoring.divided`): each head's queries divided
    by its divisor, so the product does the division.

    A soft cap (`cap * tanh`) then takes a pass less (the layer with
    `softcap(30)` at T = 4,096 on 2 CPU cores: 1.20x its plain time,
    against 1.26x). ALiBi (the table added, the product multiplied back
    by each slope) takes two passes where building its bias, adding it
    and hiding keys take three (1.14x-1.24x, against 1.29x-1.43x as a
    bias; benchmarks/README.md): the mask rides in the table at `hidden`
    where that is not `None`."""
    inverse = ops.convert_to_tensor([1.0 / d for d in divisors])
    scores = ops.einsum(
        "btnh,bsnh->bnts",
        query_heads
        * ops.cast(ops.reshape(inverse, (-1, 1)), query_heads.dtype),
        key_heads,
    )
    scores = ops.cast(scores, "float32")
    masked = mask is not None and hidden is not None
    if table is not None:
        if masked:
            table = ops.where(_per_head(mask), table, hidden)
        scores = scores + table
    if finish is None:
        per_head = ops.convert_to_tensor(divisors, "float32")
        scores = scores * ops.reshape(per_head, (1, -1, 1, 1))
    else:
        scores = finish(scores)
    if rest is not None:
        scores = rest(scores)
    return scores, masked


def single_query_attention(
    query_heads, key_heads, value_heads, mask, score=None
):
    """Softmax attention of one query per row (a decoding step), as
    `softmax_attention` without dropout or weights, written so that no
    key or value tensor is transposed: each score is a product summed over
    the head size, each output a weighted sum over the keys. Under
    TFLite, a `decode` step then moves no cache through a `TRANSPOSE` (a
    batched matmul would move the keys and the values twice each).

    Args:
        query_heads: `(B, 1, N, H)`, already scaled.
        key_heads, value_heads: `(B, S, N, H)`.
        mask: bool `(B|1, 1, S)`, `(B|1, N|1, 1, S)` or `None`.
        score: a placed `core.scores.Scoring`, or `None`.

    Returns:
        `(attended (B, 1, N, H), has_key (B, 1) or None)`.
    """
    has_key = rows_with_keys(mask, query_heads)
    # (B, S, N): the keys on axis 1, as they lie in the cache.
    scores = ops.cast(ops.sum(query_heads * key_heads, axis=-1), "float32")
    if score is not None:
        # The modifiers take (B, N, 1, S): the scores, not the cache, move.
        scores = score(ops.expand_dims(ops.transpose(scores, (0, 2, 1)), 2))
        scores = ops.transpose(ops.squeeze(scores, 2), (0, 2, 1))
    if mask is not None:
        if len(mask.shape) == 4:
            mask = mask[:, :, 0, :]
        # (B|1, S, N|1).
        mask = ops.transpose(mask, (0, 2, 1))
        scores = ops.where(mask, scores, MASKED_SCORE)
    if scores.shape[1] == 1:
        weights = ops.ones_like(scores)
    else:
        weights = ops.softmax(scores, axis=1)
    if mask is not None:
        weights = ops.where(mask, weights, 0.0)
    weights = ops.cast(weights, value_heads.dtype)
    attended = ops.sum(ops.expand_dims(weights, -1) * value_heads, axis=1)
    return ops.expand_dims(attended, 1), has_key


def per_position(has_key):
    """bool `(B, T, 1, 1)` from `(B, T)` (no new-axis slicing: TFLite's
    builtin strided slice has none)."""
    return ops.expand_dims(ops.expand_dims(has_key, -1), -1)


def _per_head(mask):
    """bool `(B|1, N|1, T, S)` from `(B|1, T, S)` or a per-head mask."""
    return mask if len(mask.shape) == 4 else ops.expand_dims(mask, 1)


def _spelled_out(mask, query_heads):
    """`_per_head(mask)`, and under JAX broadcast to the batch and the
    queries: cuDNN's fused attention, which Keras tries first on NVIDIA
    GPUs, takes no mask of one row for all queries (`(B, 1, 1, S)` from a
    key mask alone falls back to XLA with an error logged, 0.53x stock
    Keras' speed on an H200)."""
    mask = _per_head(mask)
    if keras.backend.backend() != "jax":
        return mask
    return ops.broadcast_to(
        mask,
        (
            ops.shape(query_heads)[0],
            ops.shape(mask)[1],
            ops.shape(query_heads)[1],
            ops.shape(mask)[3],
        ),
    )


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
