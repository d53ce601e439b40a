"""Adopt the package in a model that already works: Keras' attention layers
swapped for ours, with their weights.

A `.keras` file records each layer's class; Keras always rebuilds its own
`keras.layers.MultiHeadAttention` from it (`custom_objects` cannot replace a
built-in class). So the swap happens on the loaded model.

Example:

>>> import keras, numpy as np, keras_dynmask as kd
>>> ids = keras.Input((None,), dtype="int32")
>>> x = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
>>> y = keras.layers.MultiHeadAttention(2, 4)(x, x)
>>> stock = keras.Model(ids, y)
>>> ours = kd.models.replace_stock_layers(stock, pattern="causal")
>>> type(ours.layers[-1]).__module__.split(".")[0]
'keras_dynmask'
>>> str(ours.layers[-1].pattern)
'causal'
"""

import re

import keras

from keras_dynmask.layers import GroupedQueryAttention
from keras_dynmask.layers import MultiHeadAttention


def _replacements():
    return {
        keras.layers.MultiHeadAttention: MultiHeadAttention,
        keras.layers.GroupQueryAttention: GroupedQueryAttention,
    }


def replace_stock_layers(model, pattern=None):
    """A copy of `model` with Keras' attention layers replaced by ours.

    Every `keras.layers.MultiHeadAttention` becomes a
    `keras_dynmask.MultiHeadAttention`, every
    `keras.layers.GroupQueryAttention` a
    `keras_dynmask.GroupedQueryAttention`, with the same config (and
    `pattern`, if given); every other layer is rebuilt from its config;
    all weights are copied. Outputs equal the original's on real
    positions; padded query rows are zeros, and the padding mask now
    reaches every block.

    Args:
        model: a functional or `Sequential` Keras model.
        pattern: optional `Pattern` or text for the replaced layers (for
            example `"causal"`, or `"causal & window(127)"`). Defaults to
            each layer's `"bidirectional"`, the stock behaviour.

    Returns:
        A new model; `model` is unchanged.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "replace_stock_layers needs a functional or Sequential Keras "
            f"model, received {type(model).__name__}"
        )
    replacements = _replacements()

    def clone(layer):
        ours = replacements.get(type(layer))
        if ours is None:
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        if pattern is not None:
            config["pattern"] = pattern
        return ours.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except ValueError as error:
        raise ValueError(
            f"replace_stock_layers could not rebuild {model.name!r}: {error}"
        ) from error
    _copy_weights(model, copy)
    return copy


def _copy_weights(source, target):
    """Assigns each of `source`'s variables to `target`'s at its path (our
    layers may add pattern variables, which keep their values). Seed
    generators are numbered per process, so their numbers are ignored."""
    variables = {}
    for variable in target.variables:
        variables.setdefault(_path(variable), []).append(variable)
    for variable in source.variables:
        matches = variables.get(_path(variable))
        if not matches:
            raise ValueError(
                f"The copy has no variable {variable.path!r}; it has "
                f"{sorted(v.path for v in target.variables)}"
            )
        matches.pop(0).assign(variable)


def _path(variable):
    return re.sub(r"seed_generator_\d+", "seed_generator", variable.path)
