"""Token embeddings with positions for any length and a padding mask."""

import math

import keras
import numpy as np
from keras import ops

from keras_dynmask.core._checks import check_int
from keras_dynmask.core._checks import check_integer_tensor
from keras_dynmask.core._checks import concrete
from keras_dynmask.core._checks import warn_if_fixed_length
from keras_dynmask.layers._keras_mask import set_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


def sinusoidal_positions(length, dim, offset=0, dtype="float32"):
    """The Transformer's sinusoidal position encodings, for any length.

    Args:
        length: int or scalar tensor. `T`.
        dim: int. Feature size `D` (even).
        offset: int or int tensor `(B,)`. Position of the first row.
        dtype: the output dtype.

    Returns:
        `(B|1, T, D)`: sines in the first half of the features, cosines in
        the second.
    """
    offset = check_integer_tensor("offset", offset, ranks=(0, 1))
    positions = ops.expand_dims(ops.arange(length, dtype="int32"), 0)
    positions = ops.cast(positions + ops.reshape(offset, (-1, 1)), "float32")
    half = dim // 2
    frequencies = ops.exp(
        ops.arange(half, dtype="float32") * (-math.log(10000.0) / half)
    )
    angles = ops.expand_dims(positions, -1) * frequencies
    encoding = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    return ops.cast(encoding, dtype)


@_register
class TokenEmbedding(keras.layers.Layer):
    """Embeds token ids, adds positions, and starts the padding mask.

    Positions are sinusoidal (any length, no table) or none. The layer also
    runs in reverse, `embedding(hidden, reverse=True)`, giving logits over
    the vocabulary with the same matrix (tied input and output embeddings).

    Masking: propagates `token_ids != pad_id`, ANDed with any mask the ids
    already carry (for example the masked ids of `TokenMasking`); in
    reverse, the logits carry the hidden states' mask, so a loss and
    metrics skip padded positions.

    Ids outside `[0, vocabulary_size)` raise a `ValueError` when called
    eagerly; inside a compiled graph (fit, predict, exports), where no
    error can be raised, they are treated as padding: masked out.

    Args:
        vocabulary_size: int > 0.
        output_dim: int > 0, even with sinusoidal positions.
        pad_id: int or `None`. Defaults to `0`.
        positions: `"sinusoidal"` (any length, no table), `"learned"` (a
            table of `max_length` rows) or `None`. Defaults to
            `"sinusoidal"`.
        max_length: int. Rows of the learned table; a longer sequence
            raises a `ValueError` (when its length is known, eagerly or
            when traced; inside a graph of unknown length the positions
            past the table reuse its last row). Only with
            `positions="learned"`.
        embeddings_initializer: initializer. Defaults to a normal with
            standard deviation `output_dim ** -0.5` (the lookups are scaled
            by `sqrt(output_dim)`, as in the Transformer).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: int `(B, T)` token ids; with `reverse=True`, float
            `(..., D)` hidden states.
        offset: int or int tensor `(B,)`. Position of the first token, for
            decoding with a cache. Defaults to `0`.
        reverse: bool. Defaults to `False`.

    Returns:
        `(B, T, D)` carrying the `(B, T)` mask; with `reverse=True`,
        logits `(..., vocabulary_size)`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> embed = keras_dynmask.TokenEmbedding(10, 4, pad_id=0)
    >>> x = embed(np.array([[3, 4, 0]]))
    >>> x.shape, keras_dynmask.get_keras_mask(x).numpy()
    (TensorShape([1, 3, 4]), array([[ True,  True, False]]))
    >>> embed(x, reverse=True).shape
    TensorShape([1, 3, 10])
    """

    def __init__(
        self,
        vocabulary_size,
        output_dim,
        pad_id=0,
        positions="sinusoidal",
        max_length=None,
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = check_int(
            "vocabulary_size", vocabulary_size, minimum=1
        )
        self.output_dim = check_int("output_dim", output_dim, minimum=1)
        self.pad_id = None if pad_id is None else check_int("pad_id", pad_id)
        if positions not in ("sinusoidal", "learned", None):
            raise ValueError(
                "positions must be 'sinusoidal', 'learned' or None, received "
                f"positions={positions!r}"
            )
        if positions == "learned":
            max_length = check_int("max_length", max_length, minimum=1)
        elif max_length is not None:
            raise ValueError(
                "max_length is for positions='learned' (a table of that "
                f"many rows), received max_length={max_length!r} with "
                f"positions={positions!r}"
            )
        self.max_length = max_length
        if positions == "sinusoidal" and self.output_dim % 2:
            raise ValueError(
                "output_dim must be even with sinusoidal positions, received "
                f"output_dim={output_dim}"
            )
        self.positions = positions
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
            or keras.initializers.RandomNormal(stddev=self.output_dim**-0.5)
        )

    def build(self, inputs_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.vocabulary_size, self.output_dim),
            initializer=self.embeddings_initializer,
            name="embeddings",
        )
        if self.positions == "learned":
            self.position_embeddings = self.add_weight(
                shape=(self.max_length, self.output_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="position_embeddings",
            )

    def call(self, inputs, offset=0, reverse=False, mask=None):
        if reverse:
            weights = ops.cast(self.embeddings, self.compute_dtype)
            outputs = ops.matmul(inputs, ops.transpose(weights))
            # The logits keep the hidden states' padding mask, so that a
            # loss and metrics skip padded positions.
            if mask is not None:
                set_keras_mask(outputs, ops.cast(mask, "bool"))
            return outputs
        token_ids = check_integer_tensor("token_ids", inputs, ranks=(2,))
        in_range = ops.logical_and(
            ops.greater_equal(token_ids, 0),
            ops.less(token_ids, self.vocabulary_size),
        )
        held = concrete(in_range)
        if held is not None and not held.all():
            bad = np.asarray(inputs)[~held]
            raise ValueError(
                f"token_ids must be in [0, vocabulary_size="
                f"{self.vocabulary_size}), received ids {sorted(set(bad))[:5]}"
            )
        # In a graph no error can be raised: an id out of range is looked
        # up as 0 and masked out, like padding.
        given = token_ids
        token_ids = ops.where(in_range, token_ids, 0)
        outputs = ops.take(self.embeddings, token_ids, axis=0)
        # Scaled to unit size, as in the Transformer, so the positions do
        # not drown the tokens.
        outputs = ops.cast(outputs, self.compute_dtype) * ops.cast(
            math.sqrt(self.output_dim), self.compute_dtype
        )
        if self.positions == "sinusoidal":
            outputs = outputs + sinusoidal_positions(
                ops.shape(token_ids)[1],
                self.output_dim,
                offset,
                self.compute_dtype,
            )
        elif self.positions == "learned":
            outputs = outputs + self._learned_positions(token_ids, offset)
        token_mask = in_range
        if self.pad_id is not None:
            token_mask = ops.logical_and(
                token_mask, ops.not_equal(given, self.pad_id)
            )
        if mask is not None:
            token_mask = ops.logical_and(token_mask, ops.cast(mask, "bool"))
        set_keras_mask(outputs, token_mask)
        return outputs

    def _learned_positions(self, token_ids, offset):
        length = token_ids.shape[1]
        offset_value = concrete(offset)
        last = None
        if length is not None and offset_value is not None:
            last = int(np.max(offset_value, initial=0)) + length
        if last is not None and last > self.max_length:
            raise ValueError(
                f"This layer's learned position table has max_length="
                f"{self.max_length} rows; received a sequence reaching "
                f"position {last} (length {length}, offset {offset})"
            )
        offset = check_integer_tensor("offset", offset, ranks=(0, 1))
        positions = ops.expand_dims(
            ops.arange(ops.shape(token_ids)[1], dtype="int32"), 0
        ) + ops.reshape(offset, (-1, 1))
        # A length known only when running cannot raise inside a graph:
        # positions past the table reuse its last row.
        positions = ops.minimum(positions, self.max_length - 1)
        table = ops.cast(self.position_embeddings, self.compute_dtype)
        return ops.take(table, positions, axis=0)

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_spec(self, inputs, offset=0, reverse=False, mask=None):
        if not reverse:
            warn_if_fixed_length(self, inputs.shape)
        if reverse:
            shape = (*inputs.shape[:-1], self.vocabulary_size)
            return keras.KerasTensor(shape, self.compute_dtype)
        shape = (*inputs.shape, self.output_dim)
        return keras.KerasTensor(shape, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "output_dim": self.output_dim,
            "pad_id": self.pad_id,
            "positions": self.positions,
            "max_length": self.max_length,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
        }


@_register
class SinusoidalPositions(keras.layers.Layer):
    """Adds sinusoidal position encodings to features of any length.

    For inputs that are not token ids (audio frames, image patches): the
    same encodings `TokenEmbedding` adds, for any sequence length.

    Masking: passes the incoming `(B, T)` mask through.

    Call arguments:
        inputs: float tensor `(B, T, D)`, `D` even.
        offset: int or int tensor `(B,)`. Position of the first frame.
            Defaults to `0`.

    Returns:
        `inputs + encodings`, `(B, T, D)`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> layer = keras_dynmask.SinusoidalPositions()
    >>> layer(np.zeros((1, 3, 4), "float32")).numpy()[0, 1].round(3)
    array([0.841, 0.01 , 0.54 , 1.   ], dtype=float32)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or (
            inputs_shape[-1] is not None and inputs_shape[-1] % 2
        ):
            raise ValueError(
                "SinusoidalPositions takes (batch, length, features) with "
                f"an even number of features, received shape "
                f"{tuple(inputs_shape)}"
            )

    def call(self, inputs, offset=0):
        return inputs + sinusoidal_positions(
            ops.shape(inputs)[1], inputs.shape[-1], offset, inputs.dtype
        )

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
