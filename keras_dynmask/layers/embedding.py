"""Token embeddings with positions for any length and a padding mask."""

import math

import keras
import numpy as np
from keras import ops

from keras_dynmask import masks
from keras_dynmask._checks import check_int
from keras_dynmask._checks import check_integer_tensor
from keras_dynmask._checks import concrete
from keras_dynmask._checks import warn_if_fixed_length
from keras_dynmask._keras_mask import set_keras_mask

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
    already carry (for example the masked ids of `TokenMasking`).

    Ids outside `[0, vocabulary_size)` raise a `ValueError` when called
    eagerly; inside a compiled graph (fit, predict, exports), where no
    error can be raised, they are treated as padding: masked out.

    Args:
        vocabulary_size: int > 0.
        output_dim: int > 0, even with sinusoidal positions.
        pad_id: int or `None`. Defaults to `0`.
        positions: `"sinusoidal"` or `None`. Defaults to `"sinusoidal"`.
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
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = check_int(
            "vocabulary_size", vocabulary_size, minimum=1
        )
        self.output_dim = check_int("output_dim", output_dim, minimum=1)
        self.pad_id = None if pad_id is None else check_int("pad_id", pad_id)
        if positions not in ("sinusoidal", None):
            raise ValueError(
                "positions must be 'sinusoidal' or None, received "
                f"positions={positions!r}"
            )
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

    def call(self, inputs, offset=0, reverse=False, mask=None):
        if reverse:
            weights = ops.cast(self.embeddings, self.compute_dtype)
            return ops.matmul(inputs, ops.transpose(weights))
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
        token_mask = in_range
        if self.pad_id is not None:
            token_mask = ops.logical_and(
                token_mask, masks.padding_mask(inputs, self.pad_id)
            )
        if mask is not None:
            token_mask = ops.logical_and(token_mask, ops.cast(mask, "bool"))
        set_keras_mask(outputs, token_mask)
        return outputs

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
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
        }
