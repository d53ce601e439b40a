"""Keyed pseudo-random numbers: a pure function of (key, position, stream).

`keras.random` draws from one seed per call for the whole batch; masked-LM
masking needs numbers that are a function of (seed, step or copy, example),
like fairseq's `(seed, epoch, index)`, so that a rerun reproduces exactly,
every step differs, and a static mask can be tied to an example's content.
This is a small counter-based generator: integer hashing (a 31-bit variant
of a well-known xor-shift-multiply finalizer) in int64 `keras.ops`. Every
product stays below 2**59, so no backend relies on overflow behaviour, and
the numbers are bit-identical on every backend and in every process.
"""

from keras import ops

_MASK = 0x7FFFFFFF  # values live in [0, 2**31)
_MULTIPLIER = 0x45D9F3B
_GOLDEN = 0x1E3779B9


def _mix(x):
    for _ in range(2):
        x = ops.bitwise_xor(x, ops.right_shift(x, 16))
        x = ops.bitwise_and(x * _MULTIPLIER, _MASK)
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def _fold(key, value):
    """Folds a value in `[0, 2**31)` into a key in `[0, 2**31)`."""
    return _mix(ops.bitwise_xor(key, ops.bitwise_and(value + _GOLDEN, _MASK)))


def combine(key, value):
    """Folds an int `value` (any size, any shape) into `key`; returns int64."""
    key = ops.cast(key, "int64")
    value = ops.cast(value, "int64")
    key = _fold(key, ops.bitwise_and(value, _MASK))
    return _fold(key, ops.bitwise_and(ops.right_shift(value, 31), _MASK))


def row_keys(seed, counter, batch_size):
    """Keys `(B,)` for the rows of a batch: a function of (seed, counter, b)."""
    key = combine(combine(ops.convert_to_tensor(0, "int64"), seed), counter)
    return combine(key, ops.arange(batch_size, dtype="int64"))


def bits(keys, length):
    """31 random bits per position, int64 `(B, T)`: a function of (key, t).

    Args:
        keys: int64 `(B,)`.
        length: int or scalar tensor. `T`.
    """
    positions = ops.arange(length, dtype="int64")
    return _fold(ops.expand_dims(keys, 1), ops.expand_dims(positions, 0))


def stream(random_bits, number):
    """Independent bits derived from `random_bits` for stream `number`."""
    return _fold(random_bits, number)


def unit(random_bits):
    """Floats in `[0, 1)` from random bits (24 of them: exact in float32)."""
    return ops.cast(ops.right_shift(random_bits, 7), "float32") / float(2**24)


def uniform(keys, length, number=0):
    """Floats in `[0, 1)`, `(B, T)`: a function of (key, t, stream number)."""
    return unit(stream(bits(keys, length), number))
