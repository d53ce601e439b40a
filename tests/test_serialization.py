"""get_config/from_config and .keras round trips for every public layer."""

import json

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids

LAYERS = [
    kd.PaddingMask(pad_id=3),
    kd.LengthMask(),
    kd.SpanTokenMask(length=2, position=1, mode="hide"),
    kd.AttentionMask("segment & ~span(2, 4)"),
    kd.MultiHeadAttention(
        2, 4, value_dim=3, dropout=0.1, pattern="causal & window(3)"
    ),
    kd.TransformerBlock(
        2, 8, pattern="causal | prefix", dropout=0.1, normalize_first=False
    ),
    kd.TokenMasking(
        100,
        mask_token_id=4,
        unselectable_ids=[1, 2],
        count="bernoulli",
        seed=3,
        static=True,
        dupe_factor=4,
    ),
]


@pytest.mark.parametrize(
    "layer", LAYERS, ids=lambda layer: type(layer).__name__
)
def test_config_round_trips_to_identical_json(layer):
    config = json.dumps(keras.saving.serialize_keras_object(layer))
    again = keras.saving.deserialize_keras_object(
        json.loads(config), safe_mode=True
    )
    assert type(again) is type(layer)
    assert json.dumps(keras.saving.serialize_keras_object(again)) == config
    assert json.dumps(
        type(layer).from_config(layer.get_config()).get_config()
    ) == json.dumps(layer.get_config())


def test_model_with_every_layer_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    prefix = keras.Input((), dtype="int32", name="prefix_length")
    x = keras.layers.Embedding(VOCABULARY, 8)(ids)
    x = kd.PaddingMask(pad_id=0)(x, token_ids=ids)
    x = kd.SpanTokenMask(length=1, position=0, mode="hide")(x)
    x = kd.TransformerBlock(2, 16, pattern="causal | prefix")(
        x, prefix_length=prefix
    )
    x = kd.MultiHeadAttention(2, 4, pattern="window(1)")(x, x)
    mask = kd.AttentionMask("causal")(x)
    model = keras.Model([ids, prefix], [x, mask])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    inputs = [padded_ids([4, 2], 5), np.array([2, 1], "int32")]
    for got, want in zip(loaded(inputs), model(inputs), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
