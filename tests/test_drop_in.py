"""Models built with Keras' attention layers keep working with ours: their
configs, their weights files and their `.keras` files load, and give the
same outputs on every real (unpadded) position."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask import models
from tests.helpers import to_numpy

IDS = np.array([[5, 6, 7, 8, 9, 0, 0], [3, 4, 0, 0, 0, 0, 0]])
REAL = IDS != 0
# Keras' GroupQueryAttention hands its masked inputs to its projections,
# which warn; ours do not (the stock model of each test is Keras').
pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer '(query|key|value)' .* mask attached:UserWarning"
)


def _attention_model(attention_class, **arguments):
    """ids -> masked embedding -> self-attention (+ residual) -> logits."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = keras.layers.Embedding(20, 16, mask_zero=True, name="embedding")(ids)
    attention = attention_class(name="attention", **arguments)
    y = keras.layers.Add()([x, attention(x, x)])
    return keras.Model(ids, keras.layers.Dense(20, name="logits")(y))


STOCK = [
    (
        keras.layers.MultiHeadAttention,
        kd.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 8, "use_gate": True},
    ),
    (
        keras.layers.MultiHeadAttention,
        kd.MultiHeadAttention,
        # Dropout keeps Keras' layer off its fused path, which fails on JAX
        # when value_dim != key_dim (inference: no dropout is applied).
        {
            "num_heads": 2,
            "key_dim": 4,
            "value_dim": 6,
            "output_shape": 16,
            "dropout": 0.1,
        },
    ),
    (
        keras.layers.GroupQueryAttention,
        kd.GroupedQueryAttention,
        {"head_dim": 4, "num_query_heads": 4, "num_key_value_heads": 2},
    ),
]


@pytest.mark.parametrize(("stock", "ours", "arguments"), STOCK)
def test_stock_weights_load_and_give_the_same_outputs(
    stock, ours, arguments, tmp_path
):
    stock_model = _attention_model(stock, **arguments)
    stock_model.save_weights(tmp_path / "stock.weights.h5")
    our_model = _attention_model(ours, **arguments)
    our_model.load_weights(tmp_path / "stock.weights.h5")
    expected = to_numpy(stock_model(IDS))
    np.testing.assert_allclose(
        to_numpy(our_model(IDS))[REAL], expected[REAL], atol=1e-6
    )


@pytest.mark.parametrize(("stock", "ours", "arguments"), STOCK)
def test_a_stock_keras_file_loads_with_our_class(
    stock, ours, arguments, tmp_path
):
    stock_model = _attention_model(stock, **arguments)
    stock_model.save(tmp_path / "stock.keras")
    loaded = models.replace_stock_layers(
        keras.saving.load_model(tmp_path / "stock.keras")
    )
    assert type(loaded.get_layer("attention")) is ours
    expected = to_numpy(stock_model(IDS))
    np.testing.assert_allclose(
        to_numpy(loaded(IDS))[REAL], expected[REAL], atol=1e-6
    )


@pytest.mark.parametrize(("stock", "ours", "arguments"), STOCK)
def test_a_stock_config_makes_our_layer(stock, ours, arguments):
    config = stock(**arguments).get_config()
    layer = ours.from_config(config)
    assert layer.get_config() == {
        **config,
        "pattern": "bidirectional",
        "block_size": 128,
        "score": None,
    }


def test_our_padding_rows_are_zero_where_stock_gives_the_bias():
    """The one difference on the same weights: a padded query sees no key,
    so ours outputs zeros there (and keeps the mask for the next block)."""
    x = keras.layers.Embedding(20, 16, mask_zero=True)(IDS)
    layer = kd.MultiHeadAttention(2, 8)
    y = layer(x, x)
    np.testing.assert_array_equal(to_numpy(y)[~REAL], 0.0)
    np.testing.assert_array_equal(to_numpy(kd.get_keras_mask(x)), REAL)
    np.testing.assert_array_equal(to_numpy(kd.get_keras_mask(y)), REAL)


def test_replaced_layers_take_a_pattern_and_keep_the_mask():
    stock_model = _attention_model(
        keras.layers.MultiHeadAttention, **STOCK[0][2]
    )
    causal = models.replace_stock_layers(stock_model, pattern="causal")
    assert str(causal.get_layer("attention").pattern) == "causal"
    before = to_numpy(causal(IDS))
    changed = IDS.copy()
    changed[0, 4] = 11  # a later token: earlier positions do not move
    after = to_numpy(causal(changed))
    np.testing.assert_allclose(after[0, :4], before[0, :4], atol=1e-6)
    assert not np.allclose(after[0, 4], before[0, 4])


def test_models_that_cannot_be_rebuilt_are_refused():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="replace_stock_layers"):
        models.replace_stock_layers(Subclassed())
    with pytest.raises(ValueError, match="received str"):
        models.replace_stock_layers("model.keras")
