"""The examples' own logic: number words, and batched greedy decoding."""

import importlib.util
import pathlib

import keras
import numpy as np

from keras_dynmask import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_words():
    translation = _load("translation")
    assert translation.words(0) == ["zero"]
    assert translation.words(42601) == (
        "forty two thousand six hundred one".split()
    )
    assert translation.words(100000) == "one hundred thousand".split()


def test_decoding_a_batch_equals_decoding_each_source_alone():
    translation = _load("translation")
    keras.utils.set_random_seed(0)
    vocabulary = len(translation.VOCABULARY)
    model = models.build_seq2seq(
        vocabulary,
        vocabulary,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
    )
    sources = [s for s, _ in translation.pairs(5, seed=3)]
    together = translation.decode(model, translation.encode(sources), 6)
    alone = [
        translation.decode(model, translation.encode([s]), 6)[0]
        for s in sources
    ]
    assert together == alone
    assert len({len(s) for s in sources}) > 1  # really different lengths
    assert np.isfinite(
        model.predict(
            {
                "source_ids": translation.encode(sources),
                "target_ids": np.full((5, 1), translation.BOS, "int32"),
            },
            verbose=0,
        )
    ).all()
