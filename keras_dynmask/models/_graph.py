"""The shared graph of the encoder and the causal LM: token ids (and the
per-example inputs the pattern reads), the embedding, the blocks, the final
norm."""

from typing import NamedTuple

import keras

from keras_dynmask.core.parsing import as_pattern
from keras_dynmask.core.patterns import PATTERN_INPUTS
from keras_dynmask.core.scores import ALiBi
from keras_dynmask.core.scores import as_scores
from keras_dynmask.layers import TokenEmbedding
from keras_dynmask.layers import TransformerBlock


def inputs_for(pattern, name="token_ids"):
    """Keras inputs: token ids plus whatever the pattern reads per example."""
    inputs = {name: keras.Input((None,), dtype="int32", name=name)}
    for needed in sorted(pattern.required_inputs()):
        inputs[needed] = keras.Input(
            PATTERN_INPUTS[needed], dtype="int32", name=needed
        )
    return inputs


class Graph(NamedTuple):
    """A built encoder graph and the layers a cached decoder calls."""

    inputs: object  # the token ids input, or a dict with the per-example
    hidden: object  # `(B, T, D)` after the final norm
    embedding: TokenEmbedding
    blocks: list
    norm: keras.layers.LayerNormalization


POSITIONS = ("sinusoidal", "learned", "alibi", None)


def positions_and_score(positions, max_length, score):
    """The embedding's positions and the blocks' modifiers for a model's
    `positions` (`"alibi"`: none in the embedding, ALiBi first in every
    block) and `score`."""
    if positions not in POSITIONS:
        raise ValueError(
            "positions must be 'sinusoidal', 'learned', 'alibi' or None, "
            f"received positions={positions!r}"
        )
    score = as_scores(score)
    if positions == "alibi":
        return None, [ALiBi(), *score]
    if positions == "learned" and max_length is None:
        raise ValueError(
            "positions='learned' needs max_length, the rows of its table, "
            "received max_length=None"
        )
    return positions, score


def encoder_graph(
    vocabulary_size,
    num_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    pattern,
    pad_id,
    dropout,
    positions="sinusoidal",
    max_length=None,
    score=None,
):
    """The inputs, the blocks and the hidden states `(B, T, D)`."""
    pattern = as_pattern(pattern)
    inputs = inputs_for(pattern)
    positions, score = positions_and_score(positions, max_length, score)
    embedding = TokenEmbedding(
        vocabulary_size,
        hidden_dim,
        pad_id=pad_id,
        positions=positions,
        max_length=max_length,
        name="token_embedding",
    )
    x = keras.layers.Dropout(dropout)(embedding(inputs["token_ids"]))
    settings = {
        "num_heads": num_heads,
        "intermediate_dim": intermediate_dim,
        "pattern": pattern,
        "dropout": dropout,
        "score": score,
    }
    per_example = {k: v for k, v in inputs.items() if k != "token_ids"}
    blocks = [
        TransformerBlock(name=f"block_{index}", **settings)
        for index in range(num_layers)
    ]
    for block in blocks:
        x = block(x, **per_example)
    norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
    return Graph(
        inputs if per_example else inputs["token_ids"],
        norm(x),
        embedding,
        blocks,
        norm,
    )
