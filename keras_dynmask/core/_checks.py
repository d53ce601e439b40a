"""Argument checks shared by functions and layers.

Every check raises `ValueError` naming the argument and the value received,
so bad input fails at construction (or at trace time for tensors), never
with an opaque TensorFlow error deep in a graph.
"""

import numbers
import warnings

import keras
import numpy as np
from keras import ops


def check_int(name, value, minimum=None):
    """Returns `value` as a Python int, or raises a `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an int, received {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"{name} must be an int >= {minimum}, received {name}={value!r}"
        )
    return int(value)


def is_python_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer_tensor(name, value, ranks):
    """Converts `value` to an int32 tensor after checking dtype and rank.

    `ranks` are the static ranks allowed. Ranks and dtypes are static
    properties, so a wrong one is reported when the graph is traced.
    """
    if value is None:
        raise ValueError(f"{name} is required, received {name}=None")
    if is_python_int(value):
        value = ops.convert_to_tensor(value, "int32")
    elif isinstance(value, (bool, float, str, bytes)):
        raise ValueError(
            f"{name} must be an int or an integer tensor, "
            f"received {name}={value!r}"
        )
    else:
        try:
            value = ops.convert_to_tensor(value)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name} must be an int or an integer tensor, "
                f"received {name}={value!r}"
            ) from error
        dtype = keras.backend.standardize_dtype(value.dtype)
        if "int" not in dtype or dtype == "bool":
            raise ValueError(
                f"{name} must have an integer dtype, received {name} "
                f"with dtype {dtype} and shape {tuple(value.shape)}"
            )
    if len(value.shape) not in ranks:
        expected = " or ".join(str(rank) for rank in ranks)
        raise ValueError(
            f"{name} must have rank {expected}, received {name} "
            f"with shape {tuple(value.shape)}"
        )
    return ops.cast(value, "int32")


def check_fraction(name, value, with_zero=True, with_one=False):
    """Returns `value` as a float between 0 and 1 (each end included when
    asked; `[0, 1)` by default), or raises a `ValueError`."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    above = is_number and (value >= 0.0 if with_zero else value > 0.0)
    below = is_number and (value <= 1.0 if with_one else value < 1.0)
    if not (above and below):
        interval = f"{'[' if with_zero else '('}0, 1{']' if with_one else ')'}"
        raise ValueError(
            f"{name} must be a float in {interval}, received {name}={value!r}"
        )
    return float(value)


def concrete(value):
    """`value` as a numpy array when it holds data now (eager), else `None`
    (a symbolic tensor being traced into a graph)."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, NotImplementedError):
        return None


def warn_if_fixed_length(layer, shape):
    """Warns when a model is built for one sequence length only."""
    if len(shape) >= 2 and shape[1] is not None:
        warnings.warn(
            f"Layer {layer.name!r} is built on inputs of fixed length "
            f"{shape[1]}: the model's masks will only ever see that length. "
            "Use keras.Input((None,), ...) for dynamic lengths.",
            stacklevel=3,
        )
