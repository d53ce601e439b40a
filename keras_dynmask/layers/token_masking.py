"""TokenMasking: RoBERTa's dynamic masked-LM masking as a Keras layer."""

import keras
import numpy as np
from keras import ops

from keras_dynmask.core import _random
from keras_dynmask.core import masked_lm
from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.core._checks import check_integer_tensor
from keras_dynmask.layers._distribution import first_row
from keras_dynmask.layers._keras_mask import set_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


@_register
class TokenMasking(keras.layers.Layer):
    """Hides tokens for masked-LM training, drawing a fresh pattern per call.

    RoBERTa's *dynamic masking*: each time a batch passes with
    `training=True`, new tokens are selected (never padding, never
    `unselectable_ids`), and each selected token becomes `mask_token_id`
    (`mask_token_rate`), a random token (`random_token_rate`, drawn from the
    vocabulary without the unselectable ids, the mask token and the pad id),
    or stays itself (the rest).

    With `static=True` it is BERT's *static masking* under the same API: an
    example's mask is a fixed function of its content and one of
    `dupe_factor` copies, the copy picked at random each time it is seen.

    Masks are a function of (seed, step, row): the layer counts its
    training calls in the `step` variable, so a rerun with the same seed
    reproduces every mask and every step differs. The row is counted in the
    global batch: under `tf.distribute` each replica numbers its rows from
    where its slice starts, so replicas draw different masks, and N
    replicas draw what one device draws for the same global batch.
    `selection_rate` lives in the variable `selection_rate_variable`, which
    a callback may change during `model.fit` without retracing.

    With `training=False` (inference, export) the layer draws nothing: the
    ids pass unchanged, and the positions that already hold `mask_token_id`
    are reported as selected, which is what a fill-mask request needs. Its
    graph then holds no random op, so models convert to TFLite builtins.

    Masking: reads the propagated padding mask of `token_ids` (or uses
    `pad_id`); the output `token_ids` carry that padding mask onward.

    Args:
        vocabulary_size: int > 0.
        mask_token_id: int in `[0, vocabulary_size)`.
        selection_rate: float in `[0, 1]`. Defaults to `0.15`.
        mask_token_rate: float in `[0, 1]`. Defaults to `0.8`.
        random_token_rate: float in `[0, 1]`, with `mask_token_rate +
            random_token_rate <= 1`. Defaults to `0.1`.
        max_selections: int >= 1. `K`, the static width of the gathered
            outputs and the most tokens selected per row; `None` for no cap
            (`K` is then each batch's length `T`). Defaults to `20`.
        unselectable_ids: list of ints. Special tokens never selected nor
            drawn. Defaults to `()`.
        count: `"exact"` (`min(ceil(rate * n), K)` per row) or
            `"bernoulli"` (a coin per token or word, at most `K`). Defaults
            to `"exact"`.
        pad_id: int or `None`. Padding id, used when no mask is propagated.
            Defaults to `0`.
        seed: int or `None`. Defaults to `None` (a random seed).
        static: bool. BERT's static masking. Defaults to `False`.
        dupe_factor: int >= 1. Fixed masks per example when `static`.
            Defaults to `10`.
        span_masking: bool. SpanBERT's span masking: spans of whole words
            (of tokens without `word_starts`) whose lengths follow a
            geometric distribution (`span_p`, truncated at
            `max_span_length`, mean 3.8 words by default) are added in
            random order until `selection_rate` of the tokens is selected
            (the last span may pass the mark; at most `K` tokens), with one
            mask / random / keep decision per span. Defaults to `False`.
        span_p: float in `(0, 1)`. Defaults to `0.2`.
        max_span_length: int >= 1, in words. Defaults to `10`.
        continuation_ids: list of ints in `[0, vocabulary_size)`, the
            tokens that continue the word before them (WordPiece's
            `##...`). With them, the words of whole-word and span masking
            come from `token_ids` alone, without `word_starts` (a
            `word_starts` given still wins): no dict inputs, on which
            Keras 3.15's `fit` fails from a dataset distributed over
            several replicas. Defaults to `()` (words only from
            `word_starts`).
        **kwargs: base layer arguments.

    Call arguments:
        token_ids: int `(B, T)`; or `(T,)`, one sequence (every output
            loses its batch axis); or, on TensorFlow, a `tf.RaggedTensor`
            `(B, None)` (as from `tf.data`'s `ragged_batch`), whose rows
            are masked within their own lengths and whose `token_ids` and
            `mask` outputs are ragged alike.
        word_starts: optional bool, shaped as `token_ids`, `True` where a
            word begins (whole-word masking: a word is selected or not as a
            whole).
        training: bool.

    Returns:
        A dict: `token_ids` `(B, T)` (masked), `mask_positions` int32
        `(B, K)`, `mask_ids` `(B, K)` (the original ids there),
        `mask_weights` float32 `(B, K)` (1 for a real selection, 0 for
        filler), `mask` bool `(B, T)` (the selected positions).

    Example:

    >>> import numpy as np, keras_dynmask
    >>> layer = keras_dynmask.TokenMasking(
    ...     vocabulary_size=10, mask_token_id=1, selection_rate=0.5,
    ...     mask_token_rate=1.0, random_token_rate=0.0, max_selections=2,
    ...     seed=7)
    >>> out = layer(np.array([[5, 6, 7, 8, 0, 0]]), training=True)
    >>> int(out["mask_weights"].numpy().sum()), out["token_ids"].shape
    (2, TensorShape([1, 6]))
    """

    def __init__(
        self,
        vocabulary_size,
        mask_token_id,
        selection_rate=0.15,
        mask_token_rate=0.8,
        random_token_rate=0.1,
        max_selections=20,
        unselectable_ids=(),
        count="exact",
        pad_id=0,
        seed=None,
        static=False,
        dupe_factor=10,
        span_masking=False,
        span_p=0.2,
        max_span_length=10,
        continuation_ids=(),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = check_int(
            "vocabulary_size", vocabulary_size, minimum=1
        )
        self.mask_token_id = check_int("mask_token_id", mask_token_id)
        if not 0 <= self.mask_token_id < self.vocabulary_size:
            raise ValueError(
                f"mask_token_id must be in [0, vocabulary_size="
                f"{self.vocabulary_size}), received "
                f"mask_token_id={mask_token_id!r}"
            )
        self.selection_rate = check_fraction(
            "selection_rate", selection_rate, with_one=True
        )
        self.mask_token_rate = check_fraction(
            "mask_token_rate", mask_token_rate, with_one=True
        )
        self.random_token_rate = check_fraction(
            "random_token_rate", random_token_rate, with_one=True
        )
        if self.mask_token_rate + self.random_token_rate > 1.0 + 1e-9:
            raise ValueError(
                "mask_token_rate + random_token_rate must be <= 1, received "
                f"mask_token_rate={mask_token_rate!r}, "
                f"random_token_rate={random_token_rate!r}"
            )
        self.max_selections = (
            None
            if max_selections is None
            else check_int("max_selections", max_selections, minimum=1)
        )
        if isinstance(unselectable_ids, (str, bytes)) or not hasattr(
            unselectable_ids, "__iter__"
        ):
            raise ValueError(
                "unselectable_ids must be a list of ints, received "
                f"unselectable_ids={unselectable_ids!r}"
            )
        self.unselectable_ids = [
            check_int("unselectable_ids[]", i) for i in unselectable_ids
        ]
        if count not in ("exact", "bernoulli"):
            raise ValueError(
                "count must be 'exact' or 'bernoulli', received "
                f"count={count!r}"
            )
        self.count = count
        self.pad_id = None if pad_id is None else check_int("pad_id", pad_id)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.seed = check_int("seed", seed, minimum=0)
        self.static = bool(static)
        self.dupe_factor = check_int("dupe_factor", dupe_factor, minimum=1)
        self.span_masking = bool(span_masking)
        self.span_p = check_fraction("span_p", span_p, with_zero=False)
        self.max_span_length = check_int(
            "max_span_length", max_span_length, minimum=1
        )
        if isinstance(continuation_ids, (str, bytes)) or not hasattr(
            continuation_ids, "__iter__"
        ):
            raise ValueError(
                "continuation_ids must be a list of ints, received "
                f"continuation_ids={continuation_ids!r}"
            )
        self.continuation_ids = sorted(
            {check_int("continuation_ids[]", i) for i in continuation_ids}
        )
        outside = [
            i
            for i in self.continuation_ids
            if not 0 <= i < self.vocabulary_size
        ]
        if outside:
            raise ValueError(
                f"continuation_ids must be in [0, vocabulary_size="
                f"{self.vocabulary_size}), received continuation_ids with "
                f"{outside[0]}"
            )
        self._continues = np.zeros(self.vocabulary_size, bool)
        self._continues[self.continuation_ids] = True

        excluded = set(self.unselectable_ids) | {self.mask_token_id}
        if self.pad_id is not None:
            excluded.add(self.pad_id)
        drawable = np.setdiff1d(
            np.arange(self.vocabulary_size), sorted(excluded)
        ).astype("int32")
        if self.random_token_rate > 0 and drawable.size == 0:
            raise ValueError(
                "The vocabulary is too small to draw random tokens from: "
                f"vocabulary_size={self.vocabulary_size} with "
                f"{len(excluded)} ids excluded (unselectable, mask, pad); "
                "use random_token_rate=0"
            )
        self._drawable_ids = drawable
        self.selection_rate_variable = self.add_weight(
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(self.selection_rate),
            trainable=False,
            name="selection_rate",
        )
        self.step = self.add_weight(
            shape=(),
            dtype=_random.key_dtype(),
            initializer="zeros",
            trainable=False,
            # Every replica counts the same steps; the first one's count is
            # the count (and replicas may assign it in their own context).
            aggregation="only_first_replica",
            name="step",
        )

    def call(
        self,
        token_ids,
        word_starts=None,
        training=None,
        mask=None,
        token_ids_mask=None,
    ):
        # Keras fills `mask` for a lone tensor, `token_ids_mask` otherwise.
        incoming = token_ids_mask if token_ids_mask is not None else mask
        ragged = _Ragged.of(token_ids)
        if ragged is not None:
            token_ids, incoming = ragged.dense(self.pad_id), ragged.mask()
            word_starts = ragged.densify(word_starts)
        token_ids = check_integer_tensor("token_ids", token_ids, ranks=(1, 2))
        if len(token_ids.shape) == 1:  # one sequence
            outputs = self.call(
                token_ids[None],
                word_starts=None if word_starts is None else word_starts[None],
                training=training,
                mask=None if incoming is None else incoming[None],
            )
            return {name: value[0] for name, value in outputs.items()}
        if word_starts is None and self.continuation_ids:
            word_starts = masked_lm.word_starts_from_table(
                token_ids, self._continues
            )
        valid = self.valid_positions(token_ids)
        if incoming is not None:
            valid = ops.logical_and(valid, ops.cast(incoming, "bool"))
        outputs = self._masked(token_ids, word_starts, valid, training)
        if ragged is not None:
            outputs["token_ids"] = ragged.like(outputs["token_ids"])
            outputs["mask"] = ragged.like(outputs["mask"])
        return outputs

    def _masked(self, token_ids, word_starts, valid, training):
        """The outputs for a dense batch `(B, T)`."""
        if not training:
            outputs = masked_lm.find_mask_tokens(
                token_ids, valid, self.mask_token_id, self._width(token_ids)
            )
            outputs["token_ids"] = ops.copy(token_ids)
        else:
            rows = ops.shape(token_ids)[0]
            keys = _random.row_keys(
                self.seed,
                self.step,
                rows,
                first_row=first_row(rows, _random.key_dtype()),
            )
            # The fold of 0 where a replica index once went keeps every
            # mask drawn before rows were numbered in the global batch.
            keys = _random.combine(keys, 0)
            outputs = self.mask_with_keys(token_ids, keys, valid, word_starts)
            self.step.assign_add(1)
        set_keras_mask(outputs["token_ids"], valid)
        return outputs

    def valid_positions(self, token_ids):
        """bool `(B, T)`: the positions that are not `pad_id`."""
        if self.pad_id is None:
            return ops.ones_like(token_ids, dtype="bool")
        return ops.not_equal(token_ids, self.pad_id)

    def mask_with_keys(
        self, token_ids, keys, valid, word_starts=None, seed=None
    ):
        """This layer's masked-LM rules on given random keys.

        The one implementation of the rules, which the layer (keys from
        its seed and step) and `keras_dynmask.tf.data.mask_tokens_dataset`
        (keys from tf.data) both call. It reads `selection_rate_variable`
        when it runs, so a schedule reaches both.

        Args:
            token_ids: int `(B, T)`.
            keys: `(B,)` keys from `keras_dynmask.core._random`, one per row.
            valid: bool `(B, T)`: positions that may be selected.
            word_starts: optional bool `(B, T)` for whole-word masking.
            seed: int for static masks. Defaults to the layer's seed.

        Returns:
            The dict `call` returns with `training=True`.
        """
        if self.static:
            keys = masked_lm.static_keys(
                keys,
                self.seed if seed is None else seed,
                token_ids,
                valid,
                self.dupe_factor,
            )
        return masked_lm.mask_tokens(
            token_ids,
            keys,
            valid,
            ops.convert_to_tensor(self.unselectable_ids or [-1], "int32"),
            self.mask_token_id,
            ops.convert_to_tensor(self.selection_rate_variable),
            self.mask_token_rate,
            self.random_token_rate,
            self._width(token_ids),
            ops.convert_to_tensor(self._drawable_ids),
            count=self.count,
            word_starts=word_starts,
            spans=self.spans,
        )

    def _width(self, token_ids):
        """`K`: `max_selections`, or the batch's length `T` when `None`."""
        if self.max_selections is not None:
            return self.max_selections
        return ops.shape(token_ids)[1]

    @property
    def spans(self):
        """`(span_p, max_span_length)` when span masking, else `None`."""
        if not self.span_masking:
            return None
        return (self.span_p, self.max_span_length)

    def compute_mask(self, *args, **kwargs):
        # Attached in `call`; see `_keras_mask` for why none is recorded.
        return None

    def compute_output_spec(self, token_ids, word_starts=None, **kwargs):
        k = self.max_selections or token_ids.shape[-1]
        if len(token_ids.shape) == 1:
            return {
                "token_ids": keras.KerasTensor(
                    token_ids.shape, token_ids.dtype
                ),
                "mask_positions": keras.KerasTensor((k,), "int32"),
                "mask_ids": keras.KerasTensor((k,), token_ids.dtype),
                "mask_weights": keras.KerasTensor((k,), "float32"),
                "mask": keras.KerasTensor(token_ids.shape, "bool"),
            }
        batch, length = token_ids.shape[0], token_ids.shape[1]
        return {
            "token_ids": keras.KerasTensor(token_ids.shape, token_ids.dtype),
            "mask_positions": keras.KerasTensor((batch, k), "int32"),
            "mask_ids": keras.KerasTensor((batch, k), token_ids.dtype),
            "mask_weights": keras.KerasTensor((batch, k), "float32"),
            "mask": keras.KerasTensor((batch, length), "bool"),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "mask_token_id": self.mask_token_id,
            "selection_rate": self.selection_rate,
            "mask_token_rate": self.mask_token_rate,
            "random_token_rate": self.random_token_rate,
            "max_selections": self.max_selections,
            "unselectable_ids": list(self.unselectable_ids),
            "count": self.count,
            "pad_id": self.pad_id,
            "seed": self.seed,
            "static": self.static,
            "dupe_factor": self.dupe_factor,
            "span_masking": self.span_masking,
            "span_p": self.span_p,
            "max_span_length": self.max_span_length,
            "continuation_ids": list(self.continuation_ids),
        }


class _Ragged:
    """A ragged batch of ids (TensorFlow's `tf.RaggedTensor`, recognized by
    its methods so that this tier imports no TensorFlow): padded for the
    masking, and outputs made ragged again with the same row lengths."""

    def __init__(self, ragged):
        self.ragged = ragged
        self.lengths = ragged.row_lengths()

    @classmethod
    def of(cls, value):
        if hasattr(value, "row_lengths") and hasattr(value, "to_tensor"):
            if value.ragged_rank != 1:
                raise ValueError(
                    "token_ids must be a batch of sequences (ragged rank 1), "
                    f"received ragged rank {value.ragged_rank}"
                )
            return cls(value)
        return None

    def dense(self, pad_id):
        return self.ragged.to_tensor(default_value=pad_id or 0)

    def densify(self, value):
        if value is None or not hasattr(value, "to_tensor"):
            return value
        return value.to_tensor(default_value=False)

    def mask(self):
        width = ops.shape(self.dense(0))[1]
        positions = ops.arange(width)[None, :]
        return ops.less(positions, ops.cast(self.lengths, "int32")[:, None])

    def like(self, dense):
        return type(self.ragged).from_tensor(dense, lengths=self.lengths)
