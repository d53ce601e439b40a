"""Functional Transformers whose masks are built from the data in the graph.

No mask is a model input: padding comes from the token ids, attention
patterns from each block's pattern, and only per-example data that a
pattern needs (segment ids, prefix lengths, span positions) is an input.
"""

import keras
from keras import ops

from keras_dynmask._keras_mask import without_mask
from keras_dynmask.layers import TokenEmbedding
from keras_dynmask.layers import TokenMasking
from keras_dynmask.layers import TransformerBlock
from keras_dynmask.parsing import as_pattern

_register = keras.saving.register_keras_serializable(package="keras_dynmask")

# Per-example inputs a pattern may need, with their shapes after the batch.
_PATTERN_INPUTS = {
    "segment_ids": (None,),
    "prefix_length": (),
    "span_length": (),
    "span_position": (),
}


def _inputs_for(pattern, name="token_ids"):
    """Keras inputs: token ids plus whatever the pattern reads per example."""
    inputs = {name: keras.Input((None,), dtype="int32", name=name)}
    for needed in sorted(pattern.required_inputs()):
        if needed in _PATTERN_INPUTS:
            inputs[needed] = keras.Input(
                _PATTERN_INPUTS[needed], dtype="int32", name=needed
            )
    return inputs


def _stack(x, num_layers, settings, **per_example):
    for index in range(num_layers):
        x = TransformerBlock(name=f"block_{index}", **settings)(
            x, **per_example
        )
    return keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)


def gather_positions(hidden, positions):
    """`hidden[b, positions[b, k]]`, shape `(B, K, D)`.

    A one-hot matmul rather than `take_along_axis`: exact, differentiable,
    TFLite-builtin, and its gradient avoids the int64 scatter that makes
    oneDNN log an error on CPUs without AVX-512.
    """
    length = ops.shape(hidden)[1]
    one_hot = ops.one_hot(positions, length, dtype=hidden.dtype)
    return ops.einsum("bkt,btd->bkd", one_hot, hidden)


def _encoder_graph(
    vocabulary_size,
    num_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    pattern,
    pad_id,
    dropout,
):
    """Inputs, the hidden states `(B, T, D)`, and the embedding layer."""
    pattern = as_pattern(pattern)
    inputs = _inputs_for(pattern)
    embedding = TokenEmbedding(
        vocabulary_size, hidden_dim, pad_id=pad_id, name="token_embedding"
    )
    x = keras.layers.Dropout(dropout)(embedding(inputs["token_ids"]))
    settings = {
        "num_heads": num_heads,
        "intermediate_dim": intermediate_dim,
        "pattern": pattern,
        "dropout": dropout,
    }
    per_example = {k: v for k, v in inputs.items() if k != "token_ids"}
    hidden = _stack(x, num_layers, settings, **per_example)
    model_inputs = inputs if per_example else inputs["token_ids"]
    return model_inputs, hidden, embedding


def build_encoder(
    vocabulary_size,
    num_layers=4,
    num_heads=4,
    hidden_dim=256,
    intermediate_dim=1024,
    pattern="bidirectional",
    pad_id=0,
    dropout=0.1,
    name="encoder",
):
    """A Transformer encoder: token ids in, `(B, T, hidden_dim)` out.

    Args:
        vocabulary_size: int.
        num_layers, num_heads, hidden_dim, intermediate_dim: ints. Sizes.
        pattern: `Pattern` or text for every block's self-attention.
            Defaults to `"bidirectional"`.
        pad_id: int. Defaults to `0`.
        dropout: float. Defaults to `0.1`.
        name: str. Defaults to `"encoder"`.

    Returns:
        A functional `keras.Model`. Its input is `token_ids` `(B, T)`, or a
        dict that adds the per-example inputs the pattern reads
        (`segment_ids` `(B, T)`, `prefix_length` `(B,)`, ...). Its output
        carries the `(B, T)` padding mask. The embedding layer is named
        `token_embedding`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> encoder = keras_dynmask.models.build_encoder(
    ...     100, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
    >>> encoder(np.array([[5, 6, 0]])).shape
    TensorShape([1, 3, 8])
    """
    inputs, hidden, _ = _encoder_graph(
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        pattern,
        pad_id,
        dropout,
    )
    return keras.Model(inputs, hidden, name=name)


def build_causal_lm(
    vocabulary_size,
    num_layers=4,
    num_heads=4,
    hidden_dim=256,
    intermediate_dim=1024,
    pattern="causal",
    pad_id=0,
    dropout=0.1,
    name="causal_lm",
):
    """A decoder-only language model: token ids in, next-token logits out.

    Train with `model.fit(ids[:, :-1], ids[:, 1:])` and a
    `SparseCategoricalCrossentropy(from_logits=True)` loss: the logits carry
    the padding mask, so padded targets do not count.

    Args: as `build_encoder`; `pattern` defaults to `"causal"` (use
    `"causal | prefix"` for a prefix-LM, `"causal & window(W - 1)"` for a
    sliding window of `W` keys).

    Returns:
        A functional `keras.Model` giving logits `(B, T, vocabulary_size)`
        (the output projection is tied to the token embedding).
    """
    inputs, hidden, embedding = _encoder_graph(
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        pattern,
        pad_id,
        dropout,
    )
    return keras.Model(inputs, embedding(hidden, reverse=True), name=name)


def build_seq2seq(
    source_vocabulary_size,
    target_vocabulary_size,
    num_layers=3,
    num_heads=4,
    hidden_dim=256,
    intermediate_dim=1024,
    pad_id=0,
    dropout=0.1,
    name="seq2seq",
):
    """An encoder-decoder: source and target ids in, target logits out.

    The source is padded to its own length, the target to its own; the
    encoder attends bidirectionally within the real source tokens, the
    decoder causally within the real target tokens, and its
    cross-attention sees only real source tokens.

    Args:
        source_vocabulary_size, target_vocabulary_size: ints.
        num_layers: int. Blocks in the encoder and in the decoder.
        num_heads, hidden_dim, intermediate_dim: ints. Sizes.
        pad_id: int. The padding id of both sides. Defaults to `0`.
        dropout: float. Defaults to `0.1`.
        name: str.

    Returns:
        A functional `keras.Model` with inputs `{"source_ids": (B, S),
        "target_ids": (B, T)}` and logits `(B, T, target_vocabulary_size)`
        carrying the target padding mask. Train with targets shifted by one
        (teacher forcing), as for `build_causal_lm`.
    """
    source = keras.Input((None,), dtype="int32", name="source_ids")
    target = keras.Input((None,), dtype="int32", name="target_ids")
    x = TokenEmbedding(
        source_vocabulary_size,
        hidden_dim,
        pad_id=pad_id,
        name="source_embedding",
    )(source)
    x = keras.layers.Dropout(dropout)(x)
    common = {
        "num_heads": num_heads,
        "intermediate_dim": intermediate_dim,
        "dropout": dropout,
    }
    for index in range(num_layers):
        x = TransformerBlock(name=f"encoder_block_{index}", **common)(x)
    context = keras.layers.LayerNormalization(
        epsilon=1e-5, name="encoder_norm"
    )(x)
    embedding = TokenEmbedding(
        target_vocabulary_size,
        hidden_dim,
        pad_id=pad_id,
        name="target_embedding",
    )
    y = keras.layers.Dropout(dropout)(embedding(target))
    for index in range(num_layers):
        y = TransformerBlock(
            pattern="causal",
            cross_attention=True,
            name=f"decoder_block_{index}",
            **common,
        )(y, context=context)
    y = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_norm")(y)
    logits = embedding(y, reverse=True)
    return keras.Model(
        {"source_ids": source, "target_ids": target}, logits, name=name
    )


def build_classifier(encoder, num_classes, dropout=0.1, name="classifier"):
    """A sequence classifier on an encoder: mean of the real tokens, then a
    dense layer.

    Returns:
        A functional `keras.Model` giving logits `(B, num_classes)`.
    """
    inputs = encoder.input
    inputs = (
        {
            k: keras.Input(v.shape[1:], dtype=v.dtype, name=k)
            for k, v in inputs.items()
        }
        if isinstance(inputs, dict)
        else keras.Input((None,), dtype="int32", name="token_ids")
    )
    hidden = encoder(inputs)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(hidden)
    pooled = keras.layers.Dropout(dropout)(pooled)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs, logits, name=name)


@_register
class MaskedLM(keras.Model):
    """Masked-LM pretraining on an encoder, with masks drawn in the graph.

    `fit(token_ids)` needs no labels: each training step draws a fresh
    masking pattern with `masking` (RoBERTa's dynamic masking), predicts the
    hidden tokens and scores them (loss and accuracy over the selected
    positions only). `evaluate` uses fixed masks (a static copy of
    `masking`, seeded by `evaluation_seed`), so epochs compare on the same
    masks. `predict` and exports draw nothing: they predict the positions
    that already hold the mask token (fill-mask).

    Args:
        encoder: a model from `build_encoder` (input `token_ids`).
        masking: a `TokenMasking` layer.
        tie_embeddings: bool. Score with the token embedding matrix.
            Defaults to `True`.
        evaluation_seed: int. Defaults to `0`.
        **kwargs: base model arguments.

    Call returns a dict: `logits` `(B, K, vocabulary_size)` at
    `mask_positions` `(B, K)`, with `mask_ids` and `mask_weights` `(B, K)`.
    """

    def __init__(
        self,
        encoder,
        masking,
        tie_embeddings=True,
        evaluation_seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(masking, TokenMasking):
            raise ValueError(
                "masking must be a keras_dynmask.TokenMasking layer, "
                f"received masking={masking!r}"
            )
        self.encoder = encoder
        self.masking = masking
        self.tie_embeddings = bool(tie_embeddings)
        self.evaluation_seed = int(evaluation_seed)
        config = masking.get_config()
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
        self._evaluating = False

    def build(self, input_shape=None):
        hidden_dim = self.embedding.output_dim
        self.transform.build((None, None, hidden_dim))
        self.transform_norm.build((None, None, hidden_dim))
        if not self.tie_embeddings:
            self.decoder.build((None, None, hidden_dim))

    def call(self, token_ids, training=None):
        # As a functional model's int32 Input would, for TensorFlow's
        # default float signature when the model is tracked for saving.
        token_ids = ops.cast(token_ids, "int32")
        if training:
            masked = self.masking(token_ids, training=True)
        elif self._evaluating:
            masked = self.evaluation_masking(token_ids, training=True)
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
        total = ops.sum(losses * _weighted(weights, sample_weight))
        loss = total / ops.maximum(ops.sum(weights), 1.0)
        if self.losses:  # regularizers and `add_loss` terms
            loss = loss + ops.sum(
                ops.stack([ops.cast(term, "float32") for term in self.losses])
            )
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy.update_state(
            y_pred["mask_ids"],
            ops.cast(y_pred["logits"], "float32"),
            sample_weight=_weighted(y_pred["mask_weights"], sample_weight),
        )
        return self.get_metrics_result()

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "masking": keras.saving.serialize_keras_object(self.masking),
            "tie_embeddings": self.tie_embeddings,
            "evaluation_seed": self.evaluation_seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"]
        )
        config["masking"] = keras.saving.deserialize_keras_object(
            config["masking"]
        )
        return cls(**config)


def _weighted(mask_weights, sample_weight):
    """`(B, K)` selection weights times per-row `sample_weight` `(B,)`."""
    if sample_weight is None:
        return mask_weights
    sample_weight = ops.cast(sample_weight, mask_weights.dtype)
    if len(sample_weight.shape) == 1:
        sample_weight = ops.expand_dims(sample_weight, -1)
    return mask_weights * sample_weight
