"""Keyed pseudo-random numbers: a pure function of (key, position, stream).

`keras.random` draws from one seed per call for the whole batch; masked-LM
masking needs numbers that are a function of (seed, step or copy, example),
like fairseq's `(seed, epoch, index)`, so that a rerun reproduces exactly,
every step differs, and a static mask can be tied to an example's content.
This is a small counter-based generator: integer hashing (a 31-bit variant
of a well-known xor-shift-multiply finalizer) in `keras.ops`.

Keys and bits live in `[0, 2**31)`. Where the backend has 64-bit integers
(TensorFlow, PyTorch, JAX with `jax_enable_x64`), the products are formed
in int64 (each below 2**59, so nothing relies on overflow). JAX without x64
has no int64: there keys are int32, and products and sums are formed in
uint32, which wraps modulo 2**32 by definition; their low 31 bits are the
same numbers. Both paths give bit-identical numbers on every backend and
in every process (tested).
"""

import keras
from keras import ops

_MASK = 0x7FFFFFFF  # values live in [0, 2**31)
_MULTIPLIER = 0x45D9F3B
_GOLDEN = 0x1E3779B9


def key_dtype():
    """`"int64"` where the backend has it, else `"int32"` (JAX without
    x64): the dtype of keys, counters and bits."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "int32"
    return "int64"


def _wide():
    return key_dtype() == "int64"


def _times_multiplier(x):
    """`(x * _MULTIPLIER) mod 2**31` for `x` in `[0, 2**31)`."""
    if _wide():
        return ops.bitwise_and(x * _MULTIPLIER, _MASK)
    # Unsigned 32-bit products wrap modulo 2**32, whose low 31 bits are the
    # product modulo 2**31.
    product = ops.cast(x, "uint32") * _unsigned(_MULTIPLIER)
    return ops.cast(ops.bitwise_and(product, _unsigned(_MASK)), "int32")


def _add(a, b):
    """`(a + b) mod 2**31` for `a`, `b` in `[0, 2**31)`."""
    if _wide():
        return ops.bitwise_and(a + b, _MASK)
    total = ops.cast(a, "uint32") + ops.cast(b, "uint32")  # below 2**32
    return ops.cast(ops.bitwise_and(total, _unsigned(_MASK)), "int32")


def _unsigned(value):
    return ops.convert_to_tensor(value, "uint32")


def _mix(x):
    for _ in range(2):
        x = ops.bitwise_xor(x, ops.right_shift(x, 16))
        x = _times_multiplier(x)
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def _fold(key, value):
    """Folds a value in `[0, 2**31)` into a key in `[0, 2**31)`."""
    return _mix(ops.bitwise_xor(key, _add(value, _GOLDEN)))


def combine(key, value):
    """Folds an int `value` (any size, any shape) into `key`.

    The low 31 bits and the next 31 bits of `value` are folded in turn (a
    Python int is split exactly; a tensor has at most 64 bits, or 32 on
    JAX without x64, where the second part is its sign).

    Returns:
        keys of `key_dtype()`.
    """
    dtype = key_dtype()
    key = ops.cast(key, dtype)
    if isinstance(value, int):
        low, high = value & _MASK, (value >> 31) & _MASK
        low = ops.convert_to_tensor(low, dtype)
        high = ops.convert_to_tensor(high, dtype)
    else:
        value = ops.cast(value, dtype)
        low = ops.bitwise_and(value, _MASK)
        high = ops.bitwise_and(ops.right_shift(value, 31), _MASK)
    return _fold(_fold(key, low), high)


def row_keys(seed, counter, batch_size, first_row=0):
    """Keys `(B,)` for the rows of a batch: a function of (seed, counter,
    row), rows numbered from `first_row` (a replica's place in the global
    batch)."""
    key = combine(combine(ops.zeros((), key_dtype()), seed), counter)
    rows = ops.arange(batch_size, dtype=key_dtype())
    return combine(key, rows + ops.cast(first_row, key_dtype()))


def bits(keys, length):
    """31 random bits per position, `(B, T)`: a function of (key, t).

    Args:
        keys: `(B,)`, of `key_dtype()`.
        length: int or scalar tensor. `T`.
    """
    positions = ops.arange(length, dtype=key_dtype())
    return bits_at(ops.expand_dims(keys, 1), ops.expand_dims(positions, 0))


def bits_at(keys, positions):
    """The bits of `bits` at chosen positions: a function of (key, t),
    `keys` and `positions` (of `key_dtype()`) broadcast together."""
    return _fold(keys, positions)


def stream(random_bits, number):
    """Independent bits derived from `random_bits` for stream `number`."""
    return _fold(random_bits, number)


def unit(random_bits):
    """Floats in `[0, 1)` from random bits (24 of them: exact in float32)."""
    return ops.cast(ops.right_shift(random_bits, 7), "float32") / float(2**24)


def uniform(keys, length, number=0):
    """Floats in `[0, 1)`, `(B, T)`: a function of (key, t, stream number)."""
    return unit(stream(bits(keys, length), number))
