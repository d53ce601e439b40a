"""A decoder-only language model that can also run one step at a time.

`CausalLM` is a functional `keras.Model` (it trains, saves and exports as
one), and it knows its own layers: `call_with_cache` runs the same token
embedding, blocks, final norm and tied output projection as the model's
graph, writing and reading a key/value cache, so a decoder (the Python loop
in `keras_dynmask.generation`, or an exported one) never reaches around the
model for its parts.
"""

import keras
from keras import ops

from keras_dynmask.core._checks import check_int
from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.core.scores import as_scores
from keras_dynmask.core.scores import score_config
from keras_dynmask.models._graph import encoder_graph


@keras.saving.register_keras_serializable(package="keras_dynmask")
class CausalLM(keras.Model):
    """A decoder-only language model: token ids in, next-token logits out.

    Train with `model.fit(ids[:, :-1], ids[:, 1:])` and a
    `SparseCategoricalCrossentropy(from_logits=True)` loss: the logits carry
    the padding mask, so padded targets do not count.

    Args:
        vocabulary_size: int.
        num_layers, num_heads, hidden_dim, intermediate_dim: ints. Sizes.
        pattern: `Pattern` or text for every block's self-attention.
            Defaults to `"causal"` (use `"causal | prefix"` for a
            prefix-LM, `"causal & window(W - 1)"` for a sliding window of
            `W` keys).
        pad_id: int. Defaults to `0`.
        dropout: float. Defaults to `0.1`.
        name: str. Defaults to `"causal_lm"`.
        positions: `"sinusoidal"` (added to the embeddings, any length),
            `"learned"` (a table of `max_length` rows), `"alibi"` (no
            position embedding: ALiBi in every block, so any length) or
            `None`. Defaults to `"sinusoidal"`.
        max_length: int. Rows of the learned table; only with
            `positions="learned"`.
        score: score modifiers for every block's self-attention (see
            `MultiHeadAttention`), after ALiBi with `positions="alibi"`.
            Defaults to `None`.

    Its input is `token_ids` `(B, T)`, or a dict that adds the per-example
    inputs the pattern reads; its output is logits `(B, T,
    vocabulary_size)` (the output projection is the token embedding,
    transposed).

    Example:

    >>> import numpy as np, keras_dynmask as kd
    >>> lm = kd.models.CausalLM(50, num_layers=1, num_heads=2, hidden_dim=8,
    ...                         intermediate_dim=16)
    >>> ids = np.array([[5, 6, 7]])
    >>> cache = lm.init_cache(batch_size=1, max_length=4)
    >>> logits, cache = lm.call_with_cache(ids, cache, cache_index=0)
    >>> step, cache = lm.call_with_cache(np.array([[8]]), cache, 3)
    >>> whole = lm(np.array([[5, 6, 7, 8]]))
    >>> bool(np.allclose(step[:, 0], whole[:, 3], atol=1e-5))
    True
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        pattern="causal",
        pad_id=0,
        dropout=0.1,
        name="causal_lm",
        positions="sinusoidal",
        max_length=None,
        score=None,
        **kwargs,
    ):
        pattern = as_pattern(pattern)
        config = {
            "vocabulary_size": vocabulary_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "hidden_dim": hidden_dim,
            "intermediate_dim": intermediate_dim,
            "pattern": str(pattern),
            "pad_id": pad_id,
            "dropout": dropout,
            "positions": positions,
            "max_length": max_length,
            "score": score_config(as_scores(score)),
        }
        graph = encoder_graph(**{**config, "pattern": pattern})
        super().__init__(
            graph.inputs,
            graph.embedding(graph.hidden, reverse=True),
            name=name,
            **kwargs,
        )
        self._config = config
        self.vocabulary_size = vocabulary_size
        self.pad_id = pad_id
        self.pattern = pattern

    @property
    def token_embedding(self):
        """The `TokenEmbedding` (also the output projection)."""
        return self.get_layer("token_embedding")

    @property
    def transformer_blocks(self):
        """The `TransformerBlock`s, first to last."""
        return [
            self.get_layer(f"block_{index}")
            for index in range(self._config["num_layers"])
        ]

    @property
    def final_norm(self):
        return self.get_layer("final_norm")

    def init_cache(self, batch_size, max_length, per_block=False):
        """An empty key/value cache for `max_length` positions.

        Args:
            batch_size, max_length: ints, or scalar int tensors inside a
                traced function.
            per_block: bool; a list of each block's cache `(batch_size,
                2, max_length, num_heads, key_dim)` instead of one stacked
                tensor (no tensor over 5 dimensions, as TFLite's builtins
                take).

        Returns:
            zeros `(batch_size, num_layers, 2, max_length, num_heads,
            key_dim)` in the blocks' compute dtype: keys then values of
            every block (or the list of them, with `per_block`).
        """
        if not ops.is_tensor(batch_size):
            batch_size = check_int("batch_size", batch_size, minimum=1)
        if not ops.is_tensor(max_length):
            max_length = check_int("max_length", max_length, minimum=1)
        attention = self.transformer_blocks[0].self_attention
        shape = (2, max_length, attention.num_heads, attention.key_dim)
        dtype = self.transformer_blocks[0].compute_dtype
        layers = self._config["num_layers"]
        if per_block:
            return [
                ops.zeros((batch_size, *shape), dtype) for _ in range(layers)
            ]
        return ops.zeros((batch_size, layers, *shape), dtype)

    def call_with_cache(self, token_ids, cache, cache_index):
        """Logits for `token_ids` placed at `cache_index`, and the cache.

        The queries stand at positions `cache_index + t`; every block
        writes their keys and values there and attends over the cache
        through its pattern, so feeding a text in pieces gives the logits
        of the whole text (inference: no dropout).

        Args:
            token_ids: int `(B, T)`.
            cache: from `init_cache` (or a previous call); or a list of
                each block's cache `(B, 2, max_length, num_heads, key_dim)`
                (no tensor of more than 5 dimensions: what TFLite's
                builtins take).
            cache_index: int, or int `(B,)` for rows at different
                positions.

        Returns:
            `(logits (B, T, vocabulary_size), updated cache)`, the cache in
            the form it was given.
        """
        if self.pattern.required_inputs():
            raise ValueError(
                "call_with_cache runs patterns that read only positions; "
                f"this model's pattern {str(self.pattern)!r} reads "
                f"{sorted(self.pattern.required_inputs())}"
            )
        per_block = isinstance(cache, (list, tuple))
        x = self.token_embedding(token_ids, offset=cache_index)
        updated = []
        for index, block in enumerate(self.transformer_blocks):
            x, block_cache = block(
                x,
                cache=cache[index] if per_block else cache[:, index],
                cache_index=cache_index,
            )
            updated.append(block_cache)
        x = self.final_norm(x)
        logits = self.token_embedding(x, reverse=True)
        return logits, updated if per_block else ops.stack(updated, 1)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self._config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
