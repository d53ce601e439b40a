"""An encoder-decoder that can also decode one step at a time.

`Seq2Seq` is a functional `keras.Model` (it trains, saves and exports as
one) that knows its own layers, as `CausalLM` does: `init_cache` runs the
encoder once and keeps each decoder block's cross-attention keys and values
of its output, and `call_with_cache` runs the decoder over new target
tokens, writing and reading the self-attention cache and reading the
cross-attention one. Decoding a source then costs one encoder pass, not one
per new token.
"""

import keras
from keras import ops

from keras_dynmask.core._checks import check_int
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import score_config
from keras_dynmask.layers import TokenEmbedding
from keras_dynmask.layers import TransformerBlock
from keras_dynmask.models._graph import positions_and_score


@keras.saving.register_keras_serializable(package="keras_dynmask")
class Seq2Seq(keras.Model):
    """An encoder-decoder: source and target ids in, target logits out.

    The source is padded to its own length, the target to its own; the
    encoder attends bidirectionally within the real source tokens, the
    decoder causally within the real target tokens, and its
    cross-attention sees only real source tokens. Train with targets
    shifted by one (teacher forcing) and a
    `SparseCategoricalCrossentropy(from_logits=True)` loss: the logits carry
    the target padding mask, so padded targets do not count.

    Args:
        source_vocabulary_size, target_vocabulary_size: ints.
        num_layers: int. Blocks in the encoder and in the decoder.
        num_heads, hidden_dim, intermediate_dim: ints. Sizes.
        pad_id: int. The padding id of both sides. Defaults to `0`.
        dropout: float. Defaults to `0.1`.
        name: str. Defaults to `"seq2seq"`.
        positions, max_length, score: as for `CausalLM`, on both sides
            (`"alibi"`: no position embedding, ALiBi in every block's
            self-attention, bidirectional in the encoder, causal in the
            decoder; the cross-attention has no modifiers). Default to
            `"sinusoidal"`, `None`, `None`.

    Its input is `{"source_ids": (B, S), "target_ids": (B, T)}`; its output
    is logits `(B, T, target_vocabulary_size)` (the output projection is the
    target embedding, transposed).

    Example:

    >>> import numpy as np, keras_dynmask as kd
    >>> model = kd.models.Seq2Seq(30, 40, num_layers=1, num_heads=2,
    ...                           hidden_dim=8, intermediate_dim=16)
    >>> source, target = np.array([[5, 6, 7]]), np.array([[1, 8, 9]])
    >>> cache = model.init_cache(source, max_length=3)
    >>> first, cache = model.call_with_cache(target[:, :2], cache, 0)
    >>> step, cache = model.call_with_cache(target[:, 2:], cache, 2)
    >>> whole = model({"source_ids": source, "target_ids": target})
    >>> bool(np.allclose(step[:, 0], whole[:, 2], atol=1e-5))
    True
    """

    def __init__(
        self,
        source_vocabulary_size,
        target_vocabulary_size,
        num_layers=3,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        pad_id=0,
        dropout=0.1,
        name="seq2seq",
        positions="sinusoidal",
        max_length=None,
        score=None,
        **kwargs,
    ):
        config = {
            "source_vocabulary_size": check_int(
                "source_vocabulary_size", source_vocabulary_size, minimum=1
            ),
            "target_vocabulary_size": check_int(
                "target_vocabulary_size", target_vocabulary_size, minimum=1
            ),
            "num_layers": check_int("num_layers", num_layers, minimum=1),
            "num_heads": num_heads,
            "hidden_dim": hidden_dim,
            "intermediate_dim": intermediate_dim,
            "pad_id": pad_id,
            "dropout": dropout,
            "positions": positions,
            "max_length": max_length,
            "score": score_config(as_scores(score)),
        }
        inputs, logits = _graph(**config)
        super().__init__(inputs, logits, name=name, **kwargs)
        self._config = config
        self.vocabulary_size = target_vocabulary_size
        self.pad_id = pad_id

    @property
    def source_embedding(self):
        return self.get_layer("source_embedding")

    @property
    def target_embedding(self):
        """The target `TokenEmbedding` (also the output projection)."""
        return self.get_layer("target_embedding")

    @property
    def encoder_blocks(self):
        return self._blocks("encoder")

    @property
    def decoder_blocks(self):
        """The decoder's `TransformerBlock`s (with cross-attention)."""
        return self._blocks("decoder")

    def _blocks(self, side):
        return [
            self.get_layer(f"{side}_block_{index}")
            for index in range(self._config["num_layers"])
        ]

    def encode(self, source_ids):
        """The encoder's output `(B, S, hidden_dim)` for `source_ids` (no
        dropout), carrying the source padding mask."""
        x = self.source_embedding(source_ids)
        for block in self.encoder_blocks:
            x = block(x)
        return self.get_layer("encoder_norm")(x)

    def init_cache(self, source_ids, max_length, per_block=False):
        """The decoding state of `source_ids` for `max_length` target
        positions: the encoder runs here, once.

        Args:
            source_ids: int `(B, S)`, right-padded.
            max_length: int, or a scalar int tensor inside a traced
                function.
            per_block: bool; `"self"` and `"cross"` as lists of each
                decoder block's `(B, 2, L, num_heads, key_dim)` instead of
                stacked tensors (no tensor over 5 dimensions, as TFLite's
                builtins take).

        Returns:
            A dict: `"self"`, zeros `(B, num_layers, 2, max_length,
            num_heads, key_dim)` (every decoder block's self-attention keys
            then values, filled as tokens are decoded); `"cross"` `(B,
            num_layers, 2, S, num_heads, key_dim)`, every decoder block's
            cross-attention keys and values of the encoder output; and
            `"source_mask"` bool `(B, S)`, the real source positions.
        """
        source_ids = ops.convert_to_tensor(source_ids, "int32")
        if not ops.is_tensor(max_length):
            max_length = check_int("max_length", max_length, minimum=1)
        context = self.encode(source_ids)
        blocks = self.decoder_blocks
        attention = blocks[0].self_attention
        shape = (2, max_length, attention.num_heads, attention.key_dim)
        batch = ops.shape(source_ids)[0]
        dtype = blocks[0].compute_dtype
        own = [ops.zeros((batch, *shape), dtype) for _ in blocks]
        cross = [block.context_keys_and_values(context) for block in blocks]
        return {
            "self": own if per_block else ops.stack(own, axis=1),
            "cross": cross if per_block else ops.stack(cross, axis=1),
            "source_mask": self.source_mask(source_ids),
        }

    def source_mask(self, source_ids):
        """bool `(B, S)`: the real (not padding) positions of
        `source_ids`."""
        return ops.not_equal(source_ids, self.pad_id or 0)

    def call_with_cache(self, token_ids, cache, cache_index):
        """Logits for target `token_ids` placed at `cache_index`, and the
        cache.

        Args:
            token_ids: int `(B, T)`.
            cache: from `init_cache` (or a previous call). Its `"self"` and
                `"cross"` may also be lists of each block's `(B, 2, L,
                num_heads, key_dim)` (no tensor over 5 dimensions, as
                TFLite's builtins take).
            cache_index: int, or int `(B,)` for rows at different
                positions.

        Returns:
            `(logits (B, T, target_vocabulary_size), updated cache)`, the
            cache in the form it was given.
        """
        per_block = isinstance(cache["self"], (list, tuple))

        def of_block(part, index):
            return cache[part][index] if per_block else cache[part][:, index]

        x = self.target_embedding(token_ids, offset=cache_index)
        updated = []
        for index, block in enumerate(self.decoder_blocks):
            x, block_cache = block(
                x,
                cache=of_block("self", index),
                cache_index=cache_index,
                context_cache=of_block("cross", index),
                context_mask=cache["source_mask"],
            )
            updated.append(block_cache)
        x = self.get_layer("decoder_norm")(x)
        logits = self.target_embedding(x, reverse=True)
        updated = updated if per_block else ops.stack(updated, 1)
        return logits, {**cache, "self": updated}

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self._config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _graph(
    source_vocabulary_size,
    target_vocabulary_size,
    num_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    pad_id,
    dropout,
    positions,
    max_length,
    score,
):
    """The inputs and the logits of the encoder-decoder graph."""
    positions, score = positions_and_score(positions, max_length, score)
    source = keras.Input((None,), dtype="int32", name="source_ids")
    target = keras.Input((None,), dtype="int32", name="target_ids")
    x = TokenEmbedding(
        source_vocabulary_size,
        hidden_dim,
        pad_id=pad_id,
        positions=positions,
        max_length=max_length,
        name="source_embedding",
    )(source)
    x = keras.layers.Dropout(dropout)(x)
    common = {
        "num_heads": num_heads,
        "intermediate_dim": intermediate_dim,
        "dropout": dropout,
        "score": score,
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
        positions=positions,
        max_length=max_length,
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
    return {"source_ids": source, "target_ids": target}, logits
