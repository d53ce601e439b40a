"""Keras' own tests of its attention layers, run against ours.

The Keras wheel ships its tests (`keras/src/layers/attention/*_test.py`).
This file loads them from the installed wheel (nothing of them is copied
here), swaps the class under test for ours in the test module's `layers`,
and runs every test. None is skipped here; Keras' own marks skip its
flash-attention tests on TensorFlow (four) and one on JAX.
"""

import importlib.util
import pathlib

import keras

import keras_dynmask as kd

STOCK_TESTS = pathlib.Path(keras.__file__).parent / "src/layers/attention"


class _Swapped:
    """A stand-in for `keras.src.layers` with some classes replaced."""

    def __init__(self, module, **classes):
        self._module = module
        self._classes = classes

    def __getattr__(self, name):
        if name in self._classes:
            return self._classes[name]
        return getattr(self._module, name)


def _stock_test_case(filename, case, **classes):
    """The `case` TestCase of Keras' `filename`, run on `classes`."""
    path = STOCK_TESTS / filename
    spec = importlib.util.spec_from_file_location(f"stock_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.layers = _Swapped(module.layers, **classes)
    return getattr(module, case)


class TestKerasMultiHeadAttention(
    _stock_test_case(
        "multi_head_attention_test.py",
        "MultiHeadAttentionTest",
        MultiHeadAttention=kd.MultiHeadAttention,
    )
):
    """Keras 3.15's `MultiHeadAttentionTest` on `kd.MultiHeadAttention`."""


class TestKerasGroupedQueryAttention(
    _stock_test_case(
        "grouped_query_attention_test.py",
        "GroupedQueryAttentionTest",
        GroupQueryAttention=kd.GroupedQueryAttention,
        GroupedQueryAttention=kd.GroupedQueryAttention,
    )
):
    """Keras 3.15's `GroupedQueryAttentionTest` on
    `kd.GroupedQueryAttention`."""


def test_keras_tests_see_our_classes():
    """The swap reached the code the tests run (their module globals)."""
    for case, name, ours in [
        (
            TestKerasMultiHeadAttention,
            "MultiHeadAttention",
            kd.MultiHeadAttention,
        ),
        (
            TestKerasGroupedQueryAttention,
            "GroupedQueryAttention",
            kd.GroupedQueryAttention,
        ),
    ]:
        layers = case.test_basics.__globals__["layers"]
        assert getattr(layers, name) is ours
        assert layers.Dense is keras.layers.Dense
