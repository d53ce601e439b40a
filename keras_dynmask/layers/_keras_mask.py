"""The one place that touches `keras.src`: reading and attaching masks.

Keras 3.15 keeps a tensor's propagated mask in its `_keras_mask` attribute
and has no public accessor. Layers here attach a mask only to tensors they
have just created, never to their inputs (stock `MultiHeadAttention`
clears its inputs' masks in place, which drops padding masks in residual
blocks; see ARCHITECTURE.md).

Why layers here attach masks in `call` and return `None` from
`compute_mask`: when a functional model is built, Keras records each
layer's symbolic input mask as a call argument and replays that recorded
computation at run time. A mask that depends on variables or per-example
tensors cannot be recorded faithfully from `compute_mask(inputs, mask)`, so
these layers record none; Keras then reads the mask each tensor really
carries at run time.
"""

from keras import ops
from keras.src.backend.common import masking

__all__ = ["get_keras_mask", "set_keras_mask", "without_mask"]


def get_keras_mask(x):
    """The mask Keras propagates with `x`: bool `(B, T)`, or `None`.

    Example:

    >>> import numpy as np, keras, keras_dynmask as kd
    >>> x = keras.layers.Embedding(9, 2, mask_zero=True)(np.array([[4, 0]]))
    >>> kd.get_keras_mask(x).numpy()
    array([[ True, False]])
    """
    return masking.get_keras_mask(x)


def set_keras_mask(x, mask):
    """Attaches `mask` to `x`, a tensor the caller has just created."""
    masking.set_keras_mask(x, mask)


def without_mask(x):
    """`x` as a new tensor with no mask attached, leaving `x` untouched.

    For feeding sublayers that do not support masking (they would warn that
    they destroy the mask); the layer applies the mask itself.
    """
    return ops.copy(x) if get_keras_mask(x) is not None else x
