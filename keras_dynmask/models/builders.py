"""Functional Transformers whose masks are built from the data in the graph.

No mask is a model input: padding comes from the token ids, attention
patterns from each block's pattern, and only per-example data that a
pattern needs (segment ids, prefix lengths, span positions) is an input.
"""

import keras

from keras_dynmask.models._graph import encoder_graph
from keras_dynmask.models.causal_lm import CausalLM
from keras_dynmask.models.seq2seq import Seq2Seq


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
    positions="sinusoidal",
    max_length=None,
    score=None,
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
        positions: `"sinusoidal"`, `"learned"` (a table of `max_length`
            rows), `"alibi"` (no position embedding; ALiBi in every
            block) or `None`. Defaults to `"sinusoidal"`.
        max_length: int, only with `positions="learned"`.
        score: score modifiers for every block (see
            `MultiHeadAttention`), after ALiBi with `positions="alibi"`.
            Defaults to `None`.

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
    graph = encoder_graph(
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        pattern,
        pad_id,
        dropout,
        positions=positions,
        max_length=max_length,
        score=score,
    )
    return keras.Model(graph.inputs, graph.hidden, name=name)


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
    positions="sinusoidal",
    max_length=None,
    score=None,
):
    """A decoder-only language model: token ids in, next-token logits out.

    Args: as `build_encoder`; `pattern` defaults to `"causal"`.

    Returns:
        A `CausalLM` (a functional `keras.Model` giving logits `(B, T,
        vocabulary_size)` that can also decode with a key/value cache).

    Example:

    >>> import numpy as np, keras_dynmask as kd
    >>> lm = kd.models.build_causal_lm(50, num_layers=1, num_heads=2,
    ...                                hidden_dim=8, intermediate_dim=16)
    >>> tuple(lm(np.array([[5, 6, 0]])).shape)
    (1, 3, 50)
    """
    return CausalLM(
        vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        pattern=pattern,
        pad_id=pad_id,
        dropout=dropout,
        name=name,
        positions=positions,
        max_length=max_length,
        score=score,
    )


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
    positions="sinusoidal",
    max_length=None,
    score=None,
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
        positions, max_length, score: as for `build_encoder`, on both
            sides (the cross-attention has no modifiers).

    Returns:
        A `Seq2Seq`: a functional `keras.Model` with inputs `{"source_ids":
        (B, S), "target_ids": (B, T)}` and logits `(B, T,
        target_vocabulary_size)` carrying the target padding mask, that can
        also decode with key/value caches (`generation.generate(...,
        sources=...)`). Train with targets shifted by one (teacher
        forcing), as for `build_causal_lm`.
    """
    return Seq2Seq(
        source_vocabulary_size,
        target_vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        pad_id=pad_id,
        dropout=dropout,
        name=name,
        positions=positions,
        max_length=max_length,
        score=score,
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
