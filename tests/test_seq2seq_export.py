"""An encoder-decoder's SavedModel: `generate` from source ids for TF
Serving, and its logits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynmask import models
from keras_dynmask.models import generation
from keras_dynmask.tf import export
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import cut_rows
from tests.helpers import right_padded
from tests.serving import serve_grpc
from tests.serving import serve_rest

pytestmark = pytest.mark.tensorflow_only

SOURCES = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8, 9], [11]]
PROMPTS = [[1], [1, 4], [1], [1, 7, 8]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = models.build_seq2seq(30, VOCABULARY, **SIZES)
    folder = tmp_path_factory.mktemp("seq2seq") / "translator"
    saved = export.to_saved_model(
        model, folder, generation={"max_new_tokens": 6}
    )
    return model, saved, tf.saved_model.load(str(saved))


@pytest.mark.parametrize(
    "settings",
    [
        {"max_new_tokens": 7},
        {"max_new_tokens": 9, "top_k": 5, "seed": 11},
        {"max_new_tokens": 6, "top_p": 0.8, "temperature": 0.7, "seed": 3},
    ],
)
def test_generate_gives_the_tokens_of_keras(exported, settings):
    model, _, loaded = exported
    top_k = settings.get("top_k")
    want = generation.generate(
        model,
        PROMPTS,
        settings["max_new_tokens"],
        top_k=top_k,
        top_p=settings.get("top_p"),
        temperature=settings.get("temperature", 1.0),
        seed=settings.get("seed", 0),
        sources=SOURCES,
    )
    sampled = top_k is not None or "top_p" in settings
    out = loaded.signatures["generate"](
        source_ids=tf.constant(right_padded(SOURCES)),
        token_ids=tf.constant(right_padded(PROMPTS)),
        max_new_tokens=tf.constant(settings["max_new_tokens"]),
        top_k=tf.constant(top_k or (0 if sampled else 1)),
        top_p=tf.constant(float(settings.get("top_p", 1.0))),
        temperature=tf.constant(float(settings.get("temperature", 1.0))),
        seed=tf.constant(settings.get("seed", 0), tf.int64),
        end_id=tf.constant(-1),
    )
    assert cut_rows(out["token_ids"], out["lengths"].numpy()) == want


def test_generate_through_requests_with_defaults(exported):
    """The defaults given at export (6 new tokens, greedy) fill what a
    request leaves out; `end_id` stops each row."""
    from tensorflow_serving.apis import predict_pb2

    model, saved, _ = exported
    greedy = generation.generate(model, PROMPTS, 6, sources=SOURCES)
    end_id = greedy[0][1]
    stopped = generation.generate(
        model, PROMPTS, 6, sources=SOURCES, end_id=end_id
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "translator"
    request.model_spec.signature_name = "generate"
    for name, rows in (("source_ids", SOURCES), ("token_ids", PROMPTS)):
        request.inputs[name].CopyFrom(tf.make_tensor_proto(right_padded(rows)))
    request.inputs["end_id"].CopyFrom(tf.make_tensor_proto(end_id))
    response = serve_grpc(saved, request)
    tokens = tf.make_ndarray(response.outputs["token_ids"])
    lengths = tf.make_ndarray(response.outputs["lengths"])
    assert cut_rows(tokens, lengths) == stopped

    rows = json.dumps(
        {
            "signature_name": "generate",
            "instances": [
                {"source_ids": source, "token_ids": prompt}
                for source, prompt in zip(
                    right_padded(SOURCES).tolist(),
                    right_padded(PROMPTS).tolist(),
                    strict=True,
                )
            ],
        }
    )
    answer = serve_rest(saved, rows)["predictions"]
    assert [p["token_ids"][: p["lengths"]] for p in answer] == greedy


def test_serving_default_gives_the_logits(exported):
    model, _, loaded = exported
    source, target = right_padded(SOURCES), right_padded(PROMPTS)
    want = model({"source_ids": source, "target_ids": target})
    got = loaded.signatures["serving_default"](
        source_ids=tf.constant(source), target_ids=tf.constant(target)
    )["outputs"]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([[0, 5], [6, 0], [7, 0], [8, 0]], "source_ids must be right-padded"),
        ([[5], [6], [7], [0]], "every source needs a token"),
        ([[5], [6]], "as many sources as prompts"),
    ],
)
def test_bad_sources_are_named(exported, sources, message):
    _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.generate(
            tf.constant(sources, tf.int32), tf.constant(right_padded(PROMPTS))
        )


def test_a_seq2seq_has_no_text_generate(tmp_path):
    from keras_dynmask.tf.tokenizer import SPECIAL_TOKENS
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    model = models.build_seq2seq(30, VOCABULARY, **SIZES)
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, "the", "a"])
    with pytest.raises(ValueError, match="tokenizes one input"):
        export.to_text_saved_model(model, tokenizer, tmp_path / "text")


# TFLite: the encoder runs in prefill; decode reads its keys and values.


@pytest.fixture(scope="module")
def tflite(tmp_path_factory, exported):
    model = exported[0]
    folder = tmp_path_factory.mktemp("tflite")
    path = export.to_tflite(model, folder / "translator.tflite", max_length=16)
    return model, path


def test_tflite_greedy_gives_the_tokens_and_logits_of_keras(tflite):
    model, path = tflite
    want, want_logits = generation.generate(
        model, PROMPTS, 8, sources=SOURCES, return_logits=True
    )
    generator = export.TFLiteGenerator(path)
    assert generator.takes_sources
    assert generator.generate(PROMPTS, 8, sources=SOURCES) == want
    # Step by step through the signatures, feeding Keras' tokens.
    lengths = np.array([len(p) for p in PROMPTS], "int32")
    source_ids = right_padded(SOURCES)
    logits, caches = generator.prefill(
        right_padded(PROMPTS), lengths, source_ids
    )
    tokens = np.array(want, "int32")
    for step in range(8):
        np.testing.assert_allclose(logits, want_logits[:, step], atol=1e-4)
        logits, caches = generator.decode(
            tokens[:, step], lengths + step, caches, source_ids
        )


def test_tflite_signatures_and_end_id(tflite):
    from ai_edge_litert.interpreter import Interpreter

    model, path = tflite
    signatures = Interpreter(model_path=str(path)).get_signature_list()
    caches = [f"cache_{i}" for i in range(SIZES["num_layers"])]
    crosses = [f"cross_{i}" for i in range(SIZES["num_layers"])]
    assert sorted(signatures["prefill"]["inputs"]) == [
        "lengths",
        "source_ids",
        "token_ids",
    ]
    assert sorted(signatures["prefill"]["outputs"]) == sorted(
        [*caches, *crosses, "logits"]
    )
    assert sorted(signatures["decode"]["inputs"]) == sorted(
        [*caches, *crosses, "positions", "source_ids", "token_ids"]
    )
    assert sorted(signatures["decode"]["outputs"]) == sorted(
        [*caches, "logits"]
    )
    inputs = {
        "source_ids": right_padded(SOURCES),
        "target_ids": right_padded(PROMPTS),
    }
    assert export.parity(model, inputs, tflite=path)["tflite"] <= 1e-4
    free = generation.generate(model, PROMPTS, 8, sources=SOURCES)
    end_id = free[1][2]
    want = generation.generate(
        model, PROMPTS, 8, sources=SOURCES, end_id=end_id
    )
    generator = export.TFLiteGenerator(path)
    assert generator.generate(PROMPTS, 8, sources=SOURCES, end_id=end_id) == (
        want
    )
    # A source is any length; the target side holds max_length = 16.
    long_source = [[5] * 40]
    assert len(generator.generate([[1]], 15, sources=long_source)[0]) == 15
    with pytest.raises(ValueError, match="max_length=16"):
        generator.generate([[1, 2]], 15, sources=long_source)
    with pytest.raises(ValueError, match="pass sources="):
        generator.generate([[1]], 2)
    with pytest.raises(ValueError, match="one source per prompt"):
        generator.generate([[1]], 2, sources=[[3], [4]])


def test_dynamic_range_tflite_translates_near_keras(tmp_path):
    """int8 weights (a model wide enough for the converter to quantize):
    prefill's logits near Keras' float32 ones."""
    keras.utils.set_random_seed(6)
    sizes = {**SIZES, "hidden_dim": 64, "intermediate_dim": 128}
    model = models.build_seq2seq(30, VOCABULARY, **sizes)
    small = export.to_tflite(
        model,
        tmp_path / "small.tflite",
        quantization="dynamic_range",
        max_length=16,
    )
    lengths = np.array([len(p) for p in PROMPTS], "int32")
    source_ids, target_ids = right_padded(SOURCES), right_padded(PROMPTS)
    want = np.asarray(
        model({"source_ids": source_ids, "target_ids": target_ids})
    )[np.arange(len(PROMPTS)), lengths - 1]
    got, _ = export.TFLiteGenerator(small).prefill(
        target_ids, lengths, source_ids
    )
    gap = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < gap < 0.1, gap  # quantized, and close
