"""The key/value cache: writing new keys and values at each row's position."""

from keras import ops


def write_cache(cache, new, index):
    """`cache` with `new` written at positions `index, index + 1, ...`.

    Args:
        cache: `(B, S, ...)`.
        new: `(B, T, ...)`, the same trailing shape.
        index: int or int tensor `(B,)`: where each row's `new[:, 0]` goes.

    Returns:
        `(B, S, ...)`. A one-hot product rather than a scatter, so each row
        may write at its own position and the graph stays TFLite-builtin;
        it is exact (each written value is multiplied by one).
    """
    batch, length = ops.shape(new)[0], ops.shape(new)[1]
    index = ops.broadcast_to(
        ops.reshape(ops.convert_to_tensor(index, "int32"), (-1,)), (batch,)
    )
    positions = ops.expand_dims(index, 1) + ops.arange(length, dtype="int32")
    one_hot = ops.one_hot(positions, ops.shape(cache)[1], dtype=new.dtype)
    new_flat = ops.reshape(new, (batch, length, -1))
    written = ops.reshape(
        ops.einsum("bts,btf->bsf", one_hot, new_flat), ops.shape(cache)
    )
    touched = ops.reshape(
        ops.any(ops.cast(one_hot, "bool"), axis=1),
        (batch, ops.shape(cache)[1]) + (1,) * (len(cache.shape) - 2),
    )
    return ops.where(touched, written, cache)


def write_keys_and_values(cache, key_heads, value_heads, index):
    """`cache` `(B, 2, S, N, H)` with `key_heads` and `value_heads` `(B, T,
    N, H)` written at positions `index, index + 1, ...` of axis 2.

    One new position per row (a decoding step, `T` known to be 1 when
    tracing) is one select over the cache; longer writes go through
    `write_cache`. Both are exact.
    """
    cache = ops.convert_to_tensor(cache)
    if key_heads.shape[1] != 1:
        keys, values = ops.unstack(cache, 2, axis=1)
        return ops.stack(
            [
                write_cache(keys, key_heads, index),
                write_cache(values, value_heads, index),
            ],
            axis=1,
        )
    # (B|1, 1, S, 1, 1): the one position of each row. A function of the
    # index and the cache's length alone, so every block of a model
    # computes the same ops (a converter folds them into one).
    index = ops.reshape(ops.convert_to_tensor(index, "int32"), (-1, 1))
    positions = ops.arange(ops.shape(cache)[2], dtype="int32")
    hit = ops.equal(index, ops.expand_dims(positions, 0))
    hit = ops.reshape(hit, (-1, 1, ops.shape(cache)[2], 1, 1))
    new = ops.stack([key_heads, value_heads], axis=1)
    return ops.where(hit, ops.cast(new, cache.dtype), cache)
