"""MaskedLM: an encoder trained by masked-LM with masks drawn in the graph."""

import keras
from keras import ops

from keras_dynmask.layers import TokenMasking
from keras_dynmask.layers._distribution import logs_for_keras
from keras_dynmask.layers._distribution import replica_count
from keras_dynmask.layers._distribution import splits_the_batch
from keras_dynmask.layers._distribution import sum_over_replicas
from keras_dynmask.layers._distribution import synced_means
from keras_dynmask.layers._keras_mask import without_mask

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


def gather_positions(hidden, positions):
    """`hidden[b, positions[b, k]]`, shape `(B, K, D)`.

    A one-hot matmul rather than `take_along_axis`: exact, differentiable,
    TFLite-builtin, and its gradient avoids the int64 scatter that makes
    oneDNN log an error on CPUs without AVX-512.
    """
    length = ops.shape(hidden)[1]
    one_hot = ops.one_hot(positions, length, dtype=hidden.dtype)
    return ops.einsum("bkt,btd->bkd", one_hot, hidden)


@_register
class MaskedLM(keras.Model):
    """Masked-LM pretraining on an encoder, with masks drawn in the graph.

    `fit(token_ids)` needs no labels: each training step draws a fresh
    masking pattern with `masking` (RoBERTa's dynamic masking), predicts the
    hidden tokens and scores them (loss and accuracy over the selected
    positions only). `evaluate` uses fixed masks (a static copy of
    `masking`, or of `evaluation_masking`, seeded by `evaluation_seed`), so
    epochs compare on the same masks. `predict` and exports draw nothing:
    they predict the positions that already hold the mask token
    (fill-mask).

    For whole-word or span masking over words, give `fit` dicts of
    `token_ids` and `word_starts` (see
    `keras_dynmask.tf.data.with_word_starts`) instead of `token_ids`, or
    give `masking` the vocabulary's `continuation_ids` (then `fit` takes
    token ids alone, as it must from a dataset distributed over several
    replicas: Keras 3.15's `fit` fails on dict inputs there).

    Args:
        encoder: a model from `build_encoder` (input `token_ids`).
        masking: a `TokenMasking` layer.
        tie_embeddings: bool. Score with the token embedding matrix.
            Defaults to `True`.
        evaluation_seed: int. Defaults to `0`.
        evaluation_masking: a `TokenMasking` layer or `None`, whose
            settings make the fixed evaluation masks instead of
            `masking`'s: models trained with different strategies (rates,
            spans) then score on the same masks. Defaults to `None`.
        **kwargs: base model arguments.

    Call arguments:
        inputs: int `token_ids` `(B, T)`, or a dict of `token_ids` and,
            optionally, bool `word_starts` `(B, T)` (`True` where a word
            begins; read by the training masks only).
        training: bool.

    Call returns a dict: `logits` `(B, K, vocabulary_size)` at
    `mask_positions` `(B, K)`, with `mask_ids` and `mask_weights` `(B, K)`.
    """

    def __init__(
        self,
        encoder,
        masking,
        tie_embeddings=True,
        evaluation_seed=0,
        evaluation_masking=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(masking, TokenMasking):
            raise ValueError(
                "masking must be a keras_dynmask.TokenMasking layer, "
                f"received masking={masking!r}"
            )
        if evaluation_masking is not None and not isinstance(
            evaluation_masking, TokenMasking
        ):
            raise ValueError(
                "evaluation_masking must be a keras_dynmask.TokenMasking "
                "layer or None, received evaluation_masking="
                f"{evaluation_masking!r}"
            )
        if evaluation_masking is not None and (
            evaluation_masking.vocabulary_size != masking.vocabulary_size
        ):
            raise ValueError(
                "evaluation_masking must have the vocabulary of masking "
                f"(vocabulary_size={masking.vocabulary_size}), received "
                "evaluation_masking with vocabulary_size="
                f"{evaluation_masking.vocabulary_size}"
            )
        self.encoder = encoder
        self.masking = masking
        self.tie_embeddings = bool(tie_embeddings)
        self.evaluation_seed = int(evaluation_seed)
        # Its settings only: the layer itself holds no state to track.
        self._evaluation_masking_config = (
            None
            if evaluation_masking is None
            else keras.saving.serialize_keras_object(evaluation_masking)
        )
        config = (evaluation_masking or masking).get_config()
        config.update(
            name=f"{masking.name}_evaluation",
            static=True,
            dupe_factor=1,
            seed=self.evaluation_seed,
        )
        self.evaluation_masking = TokenMasking.from_config(config)
        self.embedding = encoder.get_layer("token_embedding")
        hidden_dim = self.embedding.output_dim
        self.transform = keras.layers.Dense(
            hidden_dim, activation="gelu", name="mlm_transform"
        )
        self.transform_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="mlm_norm"
        )
        vocabulary_size = self.embedding.vocabulary_size
        if self.tie_embeddings:
            self.output_bias = self.add_weight(
                shape=(vocabulary_size,), initializer="zeros", name="bias"
            )
        else:
            self.decoder = keras.layers.Dense(vocabulary_size, name="decoder")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        # The logged loss when each replica holds a slice of the batch.
        self.global_loss = keras.metrics.Mean(name="global_loss")
        self._evaluating = False

    def build(self, input_shape=None):
        hidden_dim = self.embedding.output_dim
        self.transform.build((None, None, hidden_dim))
        self.transform_norm.build((None, None, hidden_dim))
        if not self.tie_embeddings:
            self.decoder.build((None, None, hidden_dim))

    def call(self, inputs, training=None):
        token_ids, word_starts = _token_ids(inputs)
        if training:
            masked = self.masking(
                token_ids, word_starts=word_starts, training=True
            )
        elif self._evaluating:
            masked = self.evaluation_masking(
                token_ids, word_starts=word_starts, training=True
            )
        else:
            masked = self.masking(token_ids, training=False)
        # The encoder rebuilds the padding mask from the ids themselves.
        hidden = self.encoder(
            without_mask(masked["token_ids"]), training=training
        )
        hidden = gather_positions(hidden, masked["mask_positions"])
        hidden = self.transform_norm(self.transform(hidden))
        if self.tie_embeddings:
            logits = self.embedding(hidden, reverse=True) + ops.cast(
                self.output_bias, hidden.dtype
            )
        else:
            logits = self.decoder(hidden)
        return {
            "logits": logits,
            "mask_positions": masked["mask_positions"],
            "mask_ids": masked["mask_ids"],
            "mask_weights": masked["mask_weights"],
        }

    def test_step(self, *args):
        # The traced test step draws the fixed evaluation masks. (JAX's
        # trainer passes the state before the data.)
        self._evaluating = True
        try:
            return super().test_step(*args)
        finally:
            self._evaluating = False

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        logits = ops.cast(y_pred["logits"], "float32")
        weights = y_pred["mask_weights"]
        losses = keras.losses.sparse_categorical_crossentropy(
            y_pred["mask_ids"], logits, from_logits=True
        )
        # The mean over real selections, not over all K slots; a sample
        # weight scales its row's terms, as Keras' sum-over-batch losses do.
        # Under tf.distribute the count is the global batch's, so that the
        # replicas' terms (and gradients, which Keras sums) add up to the
        # one-device loss.
        total = ops.sum(losses * _weighted(weights, sample_weight))
        count = ops.maximum(
            sum_over_replicas(ops.sum(ops.cast(weights, "float32"))), 1.0
        )
        loss = total / count
        extra = 0.0
        if self.losses:  # regularizers and `add_loss` terms, once in all
            extra = ops.sum(
                ops.stack([ops.cast(term, "float32") for term in self.losses])
            )
            loss = loss + extra / replica_count()
        if splits_the_batch():
            # Keras logs each replica's loss weighted by its rows, which
            # is not the global batch's loss when the slices differ in
            # size. This logs the global loss itself, weighted by the rows
            # that hold a token (a slice may end with padding rows that
            # even out the slices).
            rows = ops.shape(weights)[0]
            if x is not None:
                token_ids, _ = _token_ids(x)
                rows = ops.sum(
                    ops.cast(
                        ops.any(
                            self.masking.valid_positions(token_ids), axis=1
                        ),
                        "float32",
                    )
                )
            self.global_loss.update_state(
                sum_over_replicas(total) / count + extra, sample_weight=rows
            )
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy.update_state(
            y_pred["mask_ids"],
            ops.cast(y_pred["logits"], "float32"),
            sample_weight=_weighted(y_pred["mask_weights"], sample_weight),
        )
        logs = self.get_metrics_result()
        del logs["global_loss"]
        if splits_the_batch():
            # The global batch's figures, as one device would log them.
            logs["loss"], logs["accuracy"] = synced_means(
                self.global_loss, self.accuracy
            )
        return logs_for_keras(logs)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "masking": keras.saving.serialize_keras_object(self.masking),
            "tie_embeddings": self.tie_embeddings,
            "evaluation_seed": self.evaluation_seed,
            "evaluation_masking": self._evaluation_masking_config,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"]
        )
        for name in ("masking", "evaluation_masking"):
            config[name] = keras.saving.deserialize_keras_object(
                config.get(name)
            )
        return cls(**config)


def _token_ids(inputs):
    """`(token_ids, word_starts)` of `inputs`: ids or a dict of them."""
    word_starts = None
    if isinstance(inputs, dict):
        unknown = sorted(set(inputs) - {"token_ids", "word_starts"})
        if "token_ids" not in inputs or unknown:
            raise ValueError(
                "inputs must be token ids or a dict of `token_ids` and "
                f"`word_starts`, received a dict with keys {sorted(inputs)}"
            )
        inputs, word_starts = inputs["token_ids"], inputs.get("word_starts")
        if word_starts is not None:
            word_starts = ops.cast(word_starts, "bool")
    # As a functional model's int32 Input would, for TensorFlow's
    # default float signature when the model is tracked for saving.
    return ops.cast(inputs, "int32"), word_starts


def _weighted(mask_weights, sample_weight):
    """`(B, K)` selection weights times per-row `sample_weight` `(B,)`."""
    if sample_weight is None:
        return mask_weights
    sample_weight = ops.cast(sample_weight, mask_weights.dtype)
    if len(sample_weight.shape) == 1:
        sample_weight = ops.expand_dims(sample_weight, -1)
    return mask_weights * sample_weight
