"""keras-hub's `MaskedLMMaskGenerator`, on this package's masking engine.

keras-hub's masked-LM preprocessors (`BertMaskedLMPreprocessor`,
`RobertaMaskedLMPreprocessor`, ...) mask through a `MaskedLMMaskGenerator`
held in their `masker` attribute. This class takes the same arguments and
gives the same outputs, drawn by `TokenMasking`: seeded (a rerun repeats
every mask), exact counts, never a special token drawn as a random
replacement, and whole-word, span and static masking on request. A
preprocessor makes its masker when it is built (after which Keras accepts
no new state), so swap the class, one line:

```python
from keras_dynmask.tf.masked_lm_generator import swap_masker

Preprocessor = swap_masker(keras_hub.models.BertMaskedLMPreprocessor, seed=0)
preprocessor = Preprocessor.from_preset(...)  # or Preprocessor(tokenizer)
```
"""

import keras
import numpy as np
import tensorflow as tf

from keras_dynmask.layers import TokenMasking


@keras.saving.register_keras_serializable(package="keras_dynmask")
class MaskedLMMaskGenerator(keras.layers.Layer):
    """Masks token ids for masked-LM training, as keras-hub's layer does.

    Every call masks (it is a preprocessing layer, used in `tf.data`), a
    fresh pattern each time: the masks are a function of (seed, call
    count, row).

    Args:
        vocabulary_size, mask_selection_rate, mask_token_id,
            mask_selection_length, unselectable_token_ids, mask_token_rate,
            random_token_rate: as for keras-hub's `MaskedLMMaskGenerator`,
            in its order and with its defaults. Padding is whatever id is
            in `unselectable_token_ids` (`[0]` by default) or, for ragged
            input, past each row's length.
        seed: int or `None` (a random seed). Defaults to `None`.
        count: `"exact"` (`min(ceil(rate * n), mask_selection_length)` of
            a row's `n` selectable tokens, tensorflow-text's rule, as
            keras-hub) or `"bernoulli"`. Defaults to `"exact"`.
        **kwargs: `TokenMasking`'s other arguments (`static`,
            `dupe_factor`, `span_masking`, `span_p`, `max_span_length`)
            and base layer arguments.

    Call arguments:
        inputs: token ids, a dense `(B, T)` or `(T,)` tensor or array, a
            `tf.RaggedTensor` `(B, None)`, or (nested) Python lists.
        word_starts: optional bool, shaped as `inputs`, for whole-word
            masking.

    Returns:
        A dict, as keras-hub's: `token_ids` (int32, masked, shaped as the
        input), `mask_positions`, `mask_ids` (int32) and `mask_weights`
        (float32): dense `(B, mask_selection_length)` when it is set, else
        ragged `(B, None)` holding only the selections. Called eagerly
        (not in `tf.data` or a `tf.function`), ragged results come back as
        Python lists, as keras-hub's do.

    Example:

    >>> import numpy as np
    >>> from keras_dynmask import MaskedLMMaskGenerator
    >>> masker = MaskedLMMaskGenerator(
    ...     vocabulary_size=10, mask_selection_rate=0.5, mask_token_id=1,
    ...     mask_selection_length=3, unselectable_token_ids=[0, 2, 3],
    ...     mask_token_rate=1.0, random_token_rate=0.0, seed=0)
    >>> out = masker(np.array([[2, 5, 6, 7, 8, 3, 0, 0]]))
    >>> sorted(out)
    ['mask_ids', 'mask_positions', 'mask_weights', 'token_ids']
    >>> out["mask_weights"].numpy().tolist()
    [[1.0, 1.0, 0.0]]
    """

    def __init__(
        self,
        vocabulary_size,
        mask_selection_rate,
        mask_token_id,
        mask_selection_length=None,
        unselectable_token_ids=(0,),
        mask_token_rate=0.8,
        random_token_rate=0.1,
        seed=None,
        count="exact",
        **kwargs,
    ):
        masking = {
            key: kwargs.pop(key)
            for key in (
                "static",
                "dupe_factor",
                "span_masking",
                "span_p",
                "max_span_length",
            )
            if key in kwargs
        }
        super().__init__(**kwargs)
        self.masking = TokenMasking(
            vocabulary_size,
            mask_token_id,
            selection_rate=mask_selection_rate,
            mask_token_rate=mask_token_rate,
            random_token_rate=random_token_rate,
            max_selections=mask_selection_length,
            unselectable_ids=list(unselectable_token_ids),
            count=count,
            pad_id=None,
            seed=seed,
            **masking,
        )
        self.vocabulary_size = vocabulary_size
        self.mask_selection_rate = mask_selection_rate
        self.mask_token_id = mask_token_id
        self.mask_selection_length = mask_selection_length
        self.unselectable_token_ids = list(unselectable_token_ids)
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.seed = self.masking.seed
        self.count = count
        self._masking_options = masking

    @classmethod
    def like(cls, generator, **kwargs):
        """One of ours with the settings of keras-hub's `generator` (and
        `kwargs`: `seed`, `count`, ...)."""
        settings = {
            name: getattr(generator, name)
            for name in (
                "vocabulary_size",
                "mask_selection_rate",
                "mask_token_id",
                "mask_selection_length",
                "unselectable_token_ids",
                "mask_token_rate",
                "random_token_rate",
            )
        }
        return cls(**{**settings, **kwargs})

    def __call__(self, inputs, *args, **kwargs):
        outputs = super().__call__(_as_tensor(inputs), *args, **kwargs)
        if tf.executing_eagerly():
            # keras-hub hands ragged results back as Python lists when
            # called eagerly (in tf.data they stay ragged).
            outputs = {
                name: value.to_list()
                if isinstance(value, tf.RaggedTensor)
                else value
                for name, value in outputs.items()
            }
        return outputs

    def call(self, inputs, word_starts=None):
        outputs = self.masking(inputs, word_starts=word_starts, training=True)
        # Ids come back int32, as keras-hub's.
        gathered = {
            "mask_positions": outputs["mask_positions"],
            "mask_ids": tf.cast(outputs["mask_ids"], "int32"),
            "mask_weights": outputs["mask_weights"],
        }
        token_ids = tf.cast(outputs["token_ids"], "int32")
        if self.mask_selection_length is None:
            gathered = _selections_only(gathered)
        return {"token_ids": token_ids, **gathered}

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "mask_selection_rate": self.mask_selection_rate,
            "mask_token_id": self.mask_token_id,
            "mask_selection_length": self.mask_selection_length,
            "unselectable_token_ids": self.unselectable_token_ids,
            "mask_token_rate": self.mask_token_rate,
            "random_token_rate": self.random_token_rate,
            "seed": self.seed,
            "count": self.count,
            **self._masking_options,
        }


def _as_tensor(inputs):
    """Python lists (ragged or not) and arrays as TensorFlow tensors."""
    if isinstance(inputs, (list, tuple)):
        lengths = {len(row) for row in inputs if isinstance(row, list)}
        if len(lengths) > 1:
            return tf.ragged.constant(inputs, dtype="int32")
        return tf.constant(inputs, dtype="int32")
    if isinstance(inputs, np.ndarray):
        return tf.constant(inputs, dtype="int32")
    return inputs


def _selections_only(gathered):
    """The gathered outputs without their filler: ragged `(B, None)`, or
    `(n,)` for one sequence."""
    weights = gathered["mask_weights"]
    if len(weights.shape) == 1:
        keep = weights > 0
        return {name: value[keep] for name, value in gathered.items()}
    lengths = tf.reduce_sum(tf.cast(weights > 0, "int64"), axis=1)
    # Selections are sorted by position and packed to the front.
    return {
        name: tf.RaggedTensor.from_tensor(value, lengths=lengths)
        for name, value in gathered.items()
    }


def swap_masker(preprocessor_class, seed=None, **options):
    """A keras-hub masked-LM preprocessor class that masks with ours.

    Args:
        preprocessor_class: a keras-hub `*MaskedLMPreprocessor` class.
        seed: int or `None`, for `MaskedLMMaskGenerator`.
        **options: its other arguments (`count`, `static`,
            `span_masking`, ...).

    Returns:
        A subclass whose `build` replaces the masker keras-hub makes with
        `MaskedLMMaskGenerator.like(masker, seed=seed, **options)`; its
        constructor and `from_preset` are the class's own.
    """

    class Swapped(preprocessor_class):
        def build(self, input_shape):
            super().build(input_shape)
            self.masker = MaskedLMMaskGenerator.like(
                self.masker, seed=seed, **options
            )

    Swapped.__name__ = Swapped.__qualname__ = preprocessor_class.__name__
    return Swapped
