"""Our MaskedLMMaskGenerator in place of keras-hub's: the same outputs'
structure on every input kind, and keras-hub's own masked-LM preprocessor
running with ours.

keras-hub's wheel ships no tests, so these are ours, of the behaviours its
documentation promises (keras-hub comes from the `peers` extra)."""

import math

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_dynmask.tf.masked_lm_generator import MaskedLMMaskGenerator
from keras_dynmask.tf.masked_lm_generator import swap_masker

pytestmark = [
    pytest.mark.tensorflow_only,
    # keras-hub's layers hand masked inputs to Keras' attention
    # projections, which warn; ours do not.
    pytest.mark.filterwarnings(
        "ignore:Layer '(query|key|value)' .* mask attached:UserWarning"
    ),
]

SETTINGS = {
    "vocabulary_size": 20,
    "mask_selection_rate": 0.3,
    "mask_token_id": 4,
    "unselectable_token_ids": [0, 2, 3],
}
INPUTS = {
    "dense batch": np.array([[2, 5, 6, 7, 8, 3, 0], [2, 9, 3, 0, 0, 0, 0]]),
    "one sequence": np.array([2, 5, 6, 7, 8, 9, 10, 3]),
    "ragged batch": tf.ragged.constant([[2, 5, 6, 7, 3], [2, 9, 3]]),
    "lists": [[2, 5, 6, 7, 3], [2, 9, 10, 11, 12, 3]],
    "one list": [2, 5, 6, 7, 3],
}


def _structure(outputs):
    """Each output's kind, dtype and rank (lists: their nesting depth)."""
    described = {}
    for name, value in outputs.items():
        if isinstance(value, list):
            depth = 1 + all(isinstance(row, list) for row in value)
            described[name] = ("list", depth)
        else:
            described[name] = (value.dtype.name, value.shape.rank)
    return described


@pytest.mark.parametrize("length", [4, None])
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_outputs_are_shaped_and_typed_as_keras_hubs(kind, length):
    settings = {**SETTINGS, "mask_selection_length": length}
    theirs = keras_hub.layers.MaskedLMMaskGenerator(**settings)(INPUTS[kind])
    ours = MaskedLMMaskGenerator(**settings, seed=0)(INPUTS[kind])
    if length is None and not all(
        isinstance(value, list) for value in theirs.values()
    ):
        # keras-hub uncapped selects nothing in some rows, and then hands
        # back empty dense tensors instead of ragged lists: compare only
        # what both give.
        theirs = {k: v for k, v in theirs.items() if k == "token_ids"}
        ours = {"token_ids": ours["token_ids"]}
    assert _structure(ours) == _structure(theirs)
    if length is not None:
        for name in ("mask_positions", "mask_ids", "mask_weights"):
            assert tuple(ours[name].shape) == tuple(theirs[name].shape)


def _rows(token_ids):
    if isinstance(token_ids, tf.RaggedTensor):
        return token_ids.to_list()
    if isinstance(token_ids, list):
        return token_ids if isinstance(token_ids[0], list) else [token_ids]
    return np.atleast_2d(token_ids).tolist()


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_selections_follow_keras_hubs_rules(kind):
    masker = MaskedLMMaskGenerator(**SETTINGS, mask_selection_length=4, seed=1)
    outputs = masker(INPUTS[kind])
    originals = _rows(INPUTS[kind])
    masked = _rows(outputs["token_ids"])
    positions = np.atleast_2d(outputs["mask_positions"].numpy())
    ids = np.atleast_2d(outputs["mask_ids"].numpy())
    weights = np.atleast_2d(outputs["mask_weights"].numpy())
    for row, original in enumerate(originals):
        selectable = [t not in (0, 2, 3) for t in original]
        chosen = positions[row][weights[row] > 0].tolist()
        assert len(chosen) == min(math.ceil(0.3 * sum(selectable)), 4)
        assert all(selectable[p] for p in chosen)
        assert ids[row][weights[row] > 0].tolist() == [
            original[p] for p in chosen
        ]
        for position, token in enumerate(original):
            if position not in chosen:
                assert masked[row][position] == token


def test_keras_hubs_bert_preprocessor_runs_with_ours():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += "the quick brown fox jumps over a lazy dog".split()
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)

    def preprocessor(seed):
        swapped = swap_masker(keras_hub.models.BertMaskedLMPreprocessor, seed)
        made = swapped(
            tokenizer,
            sequence_length=12,
            mask_selection_rate=0.4,
            mask_selection_length=3,
        )
        made.build(None)
        assert isinstance(made.masker, MaskedLMMaskGenerator)
        assert made.masker.mask_selection_length == 3
        return made

    texts = tf.constant(["the quick brown fox", "a lazy dog jumps over"])
    x, y, weights = preprocessor(0)(texts)
    assert sorted(x) == [
        "mask_positions",
        "padding_mask",
        "segment_ids",
        "token_ids",
    ]
    original = tokenizer(texts)  # eager keras-hub: lists
    for row, words in enumerate(original):
        real = weights[row].numpy() > 0
        positions = x["mask_positions"][row].numpy()[real]
        assert len(positions) == min(math.ceil(0.4 * len(words)), 3)
        # The packer put [CLS] first: word i sits at position i + 1.
        assert y[row].numpy()[real].tolist() == [
            words[p - 1] for p in positions
        ]
    again, _, _ = preprocessor(0)(texts)
    other, _, _ = preprocessor(1)(texts)
    np.testing.assert_array_equal(x["token_ids"], again["token_ids"])
    assert not np.array_equal(x["mask_positions"], other["mask_positions"])
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(2)
    batch = next(iter(dataset.map(preprocessor(0))))
    assert batch[0]["token_ids"].shape == (2, 12)


IDS = np.array([[5, 6, 7, 8, 9, 0, 0], [3, 4, 0, 0, 0, 0, 0]])


def _encoder_model(encoder_class, **arguments):
    keras.utils.set_random_seed(5)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 16, mask_zero=True, name="embedding")(ids)
    for index in range(2):
        x = encoder_class(32, 4, name=f"encoder_{index}", **arguments)(x)
    return keras.Model(ids, keras.layers.Dense(20, name="logits")(x))


@pytest.mark.parametrize(
    "arguments",
    [{}, {"normalize_first": True, "activation": "gelu", "dropout": 0.1}],
)
def test_keras_hub_encoder_weights_load_into_ours(arguments, tmp_path):
    from keras_dynmask import TransformerEncoder

    theirs = _encoder_model(keras_hub.layers.TransformerEncoder, **arguments)
    theirs.save_weights(tmp_path / "encoder.weights.h5")
    ours = _encoder_model(TransformerEncoder, **arguments)
    ours.load_weights(tmp_path / "encoder.weights.h5")
    real = IDS != 0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(IDS))[real],
        keras.ops.convert_to_numpy(theirs(IDS))[real],
        atol=1e-6,
    )
    config = theirs.get_layer("encoder_0").get_config()
    made = TransformerEncoder.from_config(config)
    assert made.get_config() == {
        **config,
        "pattern": "bidirectional",
        "block_size": 128,
        "score": None,
    }


TARGET = np.array([[5, 6, 7, 8, 0], [3, 4, 9, 0, 0]])


def _decoder_model(decoder_class, cross, **arguments):
    """Two decoder blocks, over an embedded source when `cross`."""
    keras.utils.set_random_seed(6)
    target = keras.Input((None,), dtype="int32", name="target")
    source = keras.Input((None,), dtype="int32", name="source")
    embed = keras.layers.Embedding(20, 16, mask_zero=True, name="embedding")
    x, context = embed(target), embed(source)
    for index in range(2):
        layer = decoder_class(32, 4, name=f"decoder_{index}", **arguments)
        x = layer(x, context) if cross else layer(x)
    logits = keras.layers.Dense(20, name="logits")(x)
    return keras.Model([target, source] if cross else target, logits)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("arguments", [{}, {"normalize_first": True}])
def test_keras_hub_decoder_weights_load_into_ours(cross, arguments, tmp_path):
    from keras_dynmask import TransformerDecoder

    theirs = _decoder_model(
        keras_hub.layers.TransformerDecoder, cross, **arguments
    )
    theirs.save_weights(tmp_path / "decoder.weights.h5")
    ours = _decoder_model(TransformerDecoder, cross, **arguments)
    ours.load_weights(tmp_path / "decoder.weights.h5")
    inputs = [TARGET, IDS] if cross else TARGET
    real = TARGET != 0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(inputs))[real],
        keras.ops.convert_to_numpy(theirs(inputs))[real],
        atol=1e-6,
    )
    config = theirs.get_layer("decoder_0").get_config()
    made = TransformerDecoder.from_config(config)
    assert made.built
    assert made.get_config() == {
        **config,
        "pattern": "bidirectional",
        "block_size": 128,
        "score": None,
    }


def _decode(layer, target, source):
    """keras-hub's decoding loop: write the cross-attention cache once,
    then reuse it without an index; one target token per step."""
    batch, length = target.shape[0], target.shape[1]
    self_cache = np.zeros((batch, 2, length, 4, 4), "float32")
    cross_cache = np.zeros((batch, 2, source.shape[1], 4, 4), "float32")
    outputs = []
    for step in range(length):
        out, self_cache, cross_cache = layer(
            target[:, step : step + 1],
            source,
            self_attention_cache=self_cache,
            self_attention_cache_update_index=step,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=0 if step == 0 else None,
        )
        outputs.append(keras.ops.convert_to_numpy(out)[:, 0])
    return np.stack(outputs, axis=1)


def test_cached_decoding_matches_keras_hub_and_the_whole_pass():
    from keras_dynmask import TransformerDecoder

    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, 5, 16)).astype("float32")
    source = rng.normal(size=(2, 7, 16)).astype("float32")
    theirs = keras_hub.layers.TransformerDecoder(32, 4, name="decoder")
    ours = TransformerDecoder(32, 4, name="decoder")
    whole = theirs(target, source)
    ours(target, source)
    paths = {variable.path: variable for variable in ours.weights}
    assert sorted(paths) == sorted(v.path for v in theirs.weights)
    for variable in theirs.weights:
        paths[variable.path].assign(variable)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(target, source)), whole, atol=1e-5
    )
    np.testing.assert_allclose(
        _decode(ours, target, source),
        _decode(theirs, target, source),
        atol=1e-5,
    )
    np.testing.assert_allclose(_decode(ours, target, source), whole, atol=1e-5)


def test_decoder_calls_are_checked():
    from keras_dynmask import TransformerDecoder

    x = np.zeros((1, 3, 8), "float32")
    decoder = TransformerDecoder(16, 2)
    decoder(x)
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder(x, x)
    with pytest.raises(ValueError, match="self_attention_cache_update_index"):
        decoder(x, self_attention_cache=np.zeros((1, 2, 3, 2, 4), "float32"))
