"""Layers that start or narrow the `(B, T)` token mask Keras propagates."""

import keras
from keras import ops

from keras_dynmask.core import masks
from keras_dynmask.core._checks import check_int
from keras_dynmask.core._checks import check_integer_tensor
from keras_dynmask.core._checks import warn_if_fixed_length
from keras_dynmask.layers._keras_mask import set_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


class _TokenMaskLayer(keras.layers.Layer):
    """Passes its input through and ANDs a new rule into its token mask.

    The output is a new tensor (`ops.copy`), so attaching a mask to it never
    changes the mask of the input, which other branches may still read.
    """

    def _with_mask(self, inputs, incoming, rule):
        # A rule with scalar parameters has batch axis 1; spread it to B.
        mask = ops.broadcast_to(rule, ops.shape(inputs)[:2])
        if incoming is not None:
            mask = ops.logical_and(ops.cast(incoming, "bool"), mask)
        outputs = ops.copy(inputs)
        set_keras_mask(outputs, mask)
        return outputs

    def compute_mask(self, inputs, previous_mask=None):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_spec(self, inputs, *args, **kwargs):
        warn_if_fixed_length(self, inputs.shape)
        return keras.KerasTensor(inputs.shape, inputs.dtype)


@_register
class PaddingMask(_TokenMaskLayer):
    """Starts the token mask from token ids, with any padding id.

    Call it on the ids themselves, or on their embeddings with the ids
    passed as `token_ids` (Keras' `Embedding(mask_zero=True)` only knows
    pad id 0; RoBERTa pads with 1).

    Masking: reads the incoming mask of `inputs`, if any, and propagates
    `incoming & (token_ids != pad_id)`, shape `(B, T)`.

    Args:
        pad_id: int. The padding id. Defaults to `0`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(B, T, ...)`. Passed through unchanged.
        token_ids: int tensor `(B, T)`. Defaults to `inputs`.

    Returns:
        `inputs` (a copy) carrying the `(B, T)` mask.

    Example:

    >>> import keras, keras_dynmask
    >>> ids = keras.ops.convert_to_tensor([[7, 8, 1, 1]])
    >>> x = keras.layers.Embedding(10, 4)(ids)
    >>> y = keras_dynmask.PaddingMask(pad_id=1)(x, token_ids=ids)
    >>> keras_dynmask.get_keras_mask(y).numpy()
    array([[ True,  True, False, False]])
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = check_int("pad_id", pad_id)

    # Keras fills `mask` when the layer gets one tensor and `inputs_mask`
    # when it gets several; both mean the incoming mask of `inputs`.
    def call(self, inputs, token_ids=None, mask=None, inputs_mask=None):
        ids = inputs if token_ids is None else token_ids
        rule = masks.padding_mask(ids, self.pad_id)
        incoming = inputs_mask if inputs_mask is not None else mask
        return self._with_mask(inputs, incoming, rule)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


@_register
class LengthMask(_TokenMaskLayer):
    """Starts the token mask from per-example lengths.

    For continuous inputs (audio frames, patches) where no id marks padding.

    Masking: propagates `incoming & (position < lengths)`, shape `(B, T)`.

    Call arguments:
        inputs: tensor `(B, T, ...)`. Passed through unchanged.
        lengths: int tensor `(B,)`. Valid positions per example; values
            beyond `T` are clipped.

    Returns:
        `inputs` (a copy) carrying the `(B, T)` mask.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> frames = np.zeros((2, 4, 3), "float32")
    >>> y = keras_dynmask.LengthMask()(frames, lengths=np.array([2, 4]))
    >>> keras_dynmask.get_keras_mask(y).numpy().astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 1, 1]])
    """

    def call(self, inputs, lengths, inputs_mask=None):
        rule = masks.length_mask(lengths, ops.shape(inputs)[1])
        return self._with_mask(inputs, inputs_mask, rule)


@_register
class SpanTokenMask(_TokenMaskLayer):
    """Keeps only, or hides, a span of `length` tokens from `position`.

    A dynamic span mask, `Mask(x, length, position)`, as masking tutorials
    write it by multiplying embeddings by a 0/1 vector; here it goes
    through Keras mask propagation instead, so downstream layers skip
    hidden positions rather than see zero vectors.

    `length` and `position` live in non-trainable variables
    (`length_variable`, `position_variable`), so a callback may change them
    during `model.fit` without retracing. Per-example `(B,)` tensors given
    at call time take their place. Out-of-range values are clipped.

    Masking: propagates `incoming & in_span` (`mode="keep"`) or
    `incoming & ~in_span` (`mode="hide"`), shape `(B, T)`.

    Args:
        length: int >= 0. Span length.
        position: int >= 0. First position of the span.
        mode: `"keep"` or `"hide"`. Defaults to `"keep"`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: tensor `(B, T, ...)`. Passed through unchanged.
        length: optional int tensor `(B,)` or scalar, replacing the variable.
        position: optional int tensor `(B,)` or scalar, replacing the
            variable.

    Returns:
        `inputs` (a copy) carrying the `(B, T)` mask.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> x = np.zeros((1, 5, 2), "float32")
    >>> y = keras_dynmask.SpanTokenMask(length=2, position=1, mode="hide")(x)
    >>> keras_dynmask.get_keras_mask(y).numpy().astype(int)
    array([[1, 0, 0, 1, 1]])
    """

    def __init__(self, length, position, mode="keep", **kwargs):
        super().__init__(**kwargs)
        self.length = check_int("length", length, minimum=0)
        self.position = check_int("position", position, minimum=0)
        if mode not in ("keep", "hide"):
            raise ValueError(
                f"mode must be 'keep' or 'hide', received mode={mode!r}"
            )
        self.mode = mode
        self.length_variable = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.length),
            trainable=False,
            name="length",
        )
        self.position_variable = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.position),
            trainable=False,
            name="position",
        )

    def call(
        self,
        inputs,
        length=None,
        position=None,
        mask=None,
        inputs_mask=None,
    ):
        length = self.length_variable if length is None else length
        position = self.position_variable if position is None else position
        length = check_integer_tensor("length", length, ranks=(0, 1))
        position = check_integer_tensor("position", position, ranks=(0, 1))
        rule = masks.span_token_mask(length, position, ops.shape(inputs)[1])
        if self.mode == "hide":
            rule = ops.logical_not(rule)
        incoming = inputs_mask if inputs_mask is not None else mask
        return self._with_mask(inputs, incoming, rule)

    def get_config(self):
        return {
            **super().get_config(),
            "length": self.length,
            "position": self.position,
            "mode": self.mode,
        }
