"""SpecAugment-style masking of time spans and frequency bands."""

import keras
from keras import ops

from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.layers._keras_mask import get_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class TimeFrequencyMasking(keras.layers.Layer):
    """Hides random time spans and frequency bands of features, in training.

    SpecAugment's masking (Park et al., 2019) as a layer: for every example
    and every training step, `time_masks` spans of frames and
    `frequency_masks` bands of channels are set to `fill_value` (`0.0`, the
    mean of normalized features). A fresh pattern each step, as in dynamic
    masking; at inference the layer passes its input through.

    Spans are drawn within each example's own length, read from the
    propagated `(B, T)` mask (from `LengthMask`): a span never lands on
    padding, and a span's width is at most `max_time_fraction` of the
    example's length, so short utterances are not wiped out.

    Masking: passes the incoming `(B, T)` mask through unchanged.

    Args:
        time_masks: int >= 0. Spans of frames per example. Defaults to `2`.
        max_time_width: int >= 0. Widest span, in frames. Defaults to `10`.
        max_time_fraction: float in `(0, 1]`. Widest span as a fraction of
            the example's length. Defaults to `0.2`.
        frequency_masks: int >= 0. Bands per example. Defaults to `2`.
        max_frequency_width: int >= 0. Widest band, in channels. Defaults
            to `8`.
        fill_value: float. What hidden features become. Defaults to `0.0`.
        seed: int or `None`. Defaults to `None`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float tensor `(B, T, F)`.
        training: bool. Masks only when `True`.

    Returns:
        `(B, T, F)`, with the input's mask.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> x = np.ones((1, 50, 8), "float32")
    >>> layer = keras_dynmask.TimeFrequencyMasking(
    ...     time_masks=1, max_time_width=5, frequency_masks=0, seed=1)
    >>> hidden = (layer(x, training=True).numpy()[0, :, 0] == 0).sum()
    >>> bool(0 <= hidden <= 5), bool((layer(x).numpy() == x).all())
    (True, True)
    """

    def __init__(
        self,
        time_masks=2,
        max_time_width=10,
        max_time_fraction=0.2,
        frequency_masks=2,
        max_frequency_width=8,
        fill_value=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.time_masks = check_int("time_masks", time_masks, minimum=0)
        self.max_time_width = check_int(
            "max_time_width", max_time_width, minimum=0
        )
        self.max_time_fraction = check_fraction(
            "max_time_fraction",
            max_time_fraction,
            with_zero=False,
            with_one=True,
        )
        self.frequency_masks = check_int(
            "frequency_masks", frequency_masks, minimum=0
        )
        self.max_frequency_width = check_int(
            "max_frequency_width", max_frequency_width, minimum=0
        )
        self.fill_value = float(fill_value)
        self.seed = None if seed is None else check_int("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, inputs_shape):
        if len(inputs_shape) != 3:
            raise ValueError(
                "TimeFrequencyMasking takes features (batch, frames, "
                f"channels), received shape {tuple(inputs_shape)}"
            )
        channels = inputs_shape[-1]
        if channels is not None and self.max_frequency_width > channels:
            raise ValueError(
                f"max_frequency_width must be at most the {channels} "
                f"channels, received max_frequency_width="
                f"{self.max_frequency_width}"
            )

    def call(self, inputs, training=None, mask=None):
        if not training or not (self.time_masks or self.frequency_masks):
            return inputs
        batch, frames = ops.shape(inputs)[0], ops.shape(inputs)[1]
        channels = ops.shape(inputs)[2]
        mask = get_keras_mask(inputs) if mask is None else mask
        if mask is None:
            lengths = ops.full((batch,), frames, "int32")
        else:
            lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
        widest = ops.minimum(
            self.max_time_width,
            ops.cast(
                ops.floor(
                    ops.cast(lengths, "float32") * self.max_time_fraction
                ),
                "int32",
            ),
        )
        hidden_frames = self._spans(self.time_masks, widest, lengths, frames)
        hidden_channels = self._spans(
            self.frequency_masks,
            ops.full((batch,), self.max_frequency_width, "int32"),
            ops.full((batch,), channels, "int32"),
            channels,
        )
        hidden = ops.logical_or(
            ops.expand_dims(hidden_frames, 2),
            ops.expand_dims(hidden_channels, 1),
        )
        return ops.where(
            hidden, ops.cast(self.fill_value, inputs.dtype), inputs
        )

    def _spans(self, count, widest, lengths, size):
        """bool `(B, size)`: `count` spans per row, each of a width drawn
        in `[0, widest]` and lying inside `[0, lengths)`."""
        batch = ops.shape(lengths)[0]
        hidden = ops.zeros((batch, size), "bool")
        positions = ops.arange(size, dtype="int32")[None, :]
        for _ in range(count):
            draws = keras.random.uniform((2, batch), seed=self.seed_generator)
            width = ops.cast(
                ops.floor(draws[0] * ops.cast(widest + 1, "float32")),
                "int32",
            )
            room = ops.maximum(lengths - width + 1, 1)
            start = ops.cast(
                ops.floor(draws[1] * ops.cast(room, "float32")), "int32"
            )
            inside = ops.logical_and(
                positions >= start[:, None],
                positions < (start + width)[:, None],
            )
            hidden = ops.logical_or(hidden, inside)
        return hidden

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "time_masks": self.time_masks,
            "max_time_width": self.max_time_width,
            "max_time_fraction": self.max_time_fraction,
            "frequency_masks": self.frequency_masks,
            "max_frequency_width": self.max_frequency_width,
            "fill_value": self.fill_value,
            "seed": self.seed,
        }
