"""Generation in exported models: the SavedModel's `generate` signature."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynmask import models
from keras_dynmask.models import generation
from keras_dynmask.tf import export
from keras_dynmask.tf.tokenizer import SPECIAL_TOKENS
from keras_dynmask.tf.tokenizer import WordPieceTokenizer
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import cut_rows
from tests.helpers import right_padded
from tests.helpers import serve_in_fresh_process
from tests.serving import serve_grpc
from tests.serving import serve_rest

pytestmark = pytest.mark.tensorflow_only

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 3], [4, 4]]
WORDS = "the list of values is returned by this function and a new file".split()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = models.build_causal_lm(VOCABULARY, **SIZES)
    folder = tmp_path_factory.mktemp("generation") / "lm"
    saved = export.to_saved_model(model, folder)
    return model, saved, tf.saved_model.load(str(saved))


SETTINGS = [
    {"max_new_tokens": 7},
    {"max_new_tokens": 9, "top_k": 5, "seed": 11},
    {"max_new_tokens": 6, "top_k": 0, "top_p": 0.8, "temperature": 0.7},
    {"max_new_tokens": 8, "top_k": 10, "top_p": 0.9, "seed": 2},
]


def _python_settings(settings):
    """The `generation.generate` keywords of a request's settings."""
    out = {"max_new_tokens": settings["max_new_tokens"]}
    if settings.get("top_k", 1) != 1 or "top_p" in settings:
        out["top_k"] = settings.get("top_k") or None
        out["top_p"] = settings.get("top_p")
        out["temperature"] = settings.get("temperature", 1.0)
        out["seed"] = settings.get("seed", 0)
    return out


@pytest.mark.parametrize("settings", SETTINGS)
def test_generate_signature_gives_the_tokens_of_keras(exported, settings):
    model, _, loaded = exported
    want = generation.generate(model, PROMPTS, **_python_settings(settings))
    generate = loaded.signatures["generate"]
    feed = {
        "token_ids": tf.constant(right_padded(PROMPTS)),
        "max_new_tokens": tf.constant(settings["max_new_tokens"]),
        "top_k": tf.constant(settings.get("top_k", 1)),
        "top_p": tf.constant(float(settings.get("top_p", 1.0))),
        "temperature": tf.constant(float(settings.get("temperature", 1.0))),
        "seed": tf.constant(settings.get("seed", 0), tf.int64),
        "end_id": tf.constant(-1),
    }
    out = generate(**feed)
    assert cut_rows(out["token_ids"], out["lengths"].numpy()) == want


def test_generate_stops_rows_at_the_end_id_and_pads_after(exported):
    model, _, loaded = exported
    free = generation.generate(model, PROMPTS, 8, top_k=4, seed=5)
    end_id = free[0][2]
    want = generation.generate(
        model, PROMPTS, 8, top_k=4, seed=5, end_id=end_id
    )
    got = loaded.generate(
        tf.constant(right_padded(PROMPTS)),
        max_new_tokens=tf.constant(8),
        top_k=tf.constant(4),
        seed=tf.constant(5, tf.int64),
        end_id=tf.constant(end_id),
    )
    tokens, lengths = got["token_ids"].numpy(), got["lengths"].numpy()
    assert cut_rows(tokens, lengths) == want
    for row, n in enumerate(lengths):
        assert (tokens[row, n:] == 0).all()


def test_generate_through_requests_and_json_with_defaults(exported):
    """TF Serving's three request forms; the settings a request leaves out
    take the signature's defaults (greedy, 32 new tokens)."""
    from tensorflow_serving.apis import predict_pb2

    model, saved, _ = exported
    ids = right_padded(PROMPTS)
    greedy = generation.generate(model, PROMPTS, 32)
    sampled = generation.generate(model, PROMPTS, 5, top_k=3, seed=9)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lm"
    request.model_spec.signature_name = "generate"
    request.inputs["token_ids"].CopyFrom(tf.make_tensor_proto(ids))
    request.inputs["max_new_tokens"].CopyFrom(tf.make_tensor_proto(5))
    request.inputs["top_k"].CopyFrom(tf.make_tensor_proto(3))
    request.inputs["seed"].CopyFrom(tf.make_tensor_proto(9, tf.int64))
    response = serve_grpc(saved, request)
    tokens = tf.make_ndarray(response.outputs["token_ids"])
    lengths = tf.make_ndarray(response.outputs["lengths"])
    assert cut_rows(tokens, lengths) == sampled

    rows = json.dumps(
        {
            "signature_name": "generate",
            "instances": [{"token_ids": row} for row in ids.tolist()],
        }
    )
    answer = serve_rest(saved, rows)["predictions"]
    assert [p["token_ids"][: p["lengths"]] for p in answer] == greedy

    columns = json.dumps(
        {
            "signature_name": "generate",
            "inputs": {
                "token_ids": ids.tolist(),
                "max_new_tokens": 5,
                "top_k": 3,
                "seed": 9,
            },
        }
    )
    answer = serve_rest(saved, columns)["outputs"]
    assert cut_rows(answer["token_ids"], answer["lengths"]) == sampled


def test_generate_in_a_process_without_this_package(exported):
    model, saved, _ = exported
    want = generation.generate(model, PROMPTS, 4, top_k=6, seed=1)
    feed = (
        f"token_ids=tf.constant({right_padded(PROMPTS).tolist()}), "
        "max_new_tokens=tf.constant(4), top_k=tf.constant(6), "
        "top_p=tf.constant(1.0), temperature=tf.constant(1.0), "
        "seed=tf.constant(1, tf.int64), end_id=tf.constant(-1)"
    )
    got = serve_in_fresh_process(saved, "generate", feed)
    assert cut_rows(got["token_ids"], got["lengths"]) == want


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_k": VOCABULARY + 1}, "top_k must be from 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
    ],
)
def test_bad_settings_are_named(exported, settings, message):
    _, _, loaded = exported
    feed = {k: tf.constant(v) for k, v in settings.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.generate(tf.constant(right_padded(PROMPTS)), **feed)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([[0, 5, 6]], "right-padded"),
        ([[5, 0, 6]], "right-padded"),
        ([[5, 6], [0, 0]], "every prompt needs a token"),
    ],
)
def test_bad_prompts_are_named(exported, ids, message):
    _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.generate(tf.constant(ids, tf.int32))


def test_generation_settings_are_for_causal_lms_only(tmp_path):
    encoder = models.build_encoder(VOCABULARY, **SIZES)
    with pytest.raises(ValueError, match="generation settings are for"):
        export.to_saved_model(
            encoder, tmp_path / "encoder", generation={"top_k": 3}
        )
    keras.utils.set_random_seed(0)
    lm = models.build_causal_lm(VOCABULARY, **SIZES)
    with pytest.raises(ValueError, match="Unknown generation settings"):
        export.to_saved_model(lm, tmp_path / "lm", generation={"top": 3})


def test_text_in_text_out(tmp_path):
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, *WORDS, "##s"])
    keras.utils.set_random_seed(4)
    model = models.build_causal_lm(tokenizer.vocabulary_size, **SIZES)
    texts = ["the list", "a new file is returned by", "values"]
    prompts = [
        [tokenizer.cls_id, *row] for row in tokenizer.tokenize(texts).to_list()
    ]
    want = generation.generate(
        model, prompts, 6, top_k=5, seed=2, end_id=tokenizer.sep_id
    )
    saved = export.to_text_saved_model(
        model,
        tokenizer,
        tmp_path / "text_lm",
        generation={"max_new_tokens": 6, "top_k": 5, "seed": 2},
    )
    rows = json.dumps(
        {
            "signature_name": "generate",
            "instances": [{"text": text} for text in texts],
        }
    )
    answer = serve_rest(saved, rows)["predictions"]
    assert [p["token_ids"][: p["lengths"]] for p in answer] == want
    assert [p["text"] for p in answer] == [tokenizer.decode(r) for r in want]
    # A client with TensorFlow and tensorflow-text only.
    got = serve_in_fresh_process(
        saved,
        "generate",
        f"text=tf.constant({texts}), max_new_tokens=tf.constant(6), "
        "top_k=tf.constant(5), top_p=tf.constant(1.0), "
        "temperature=tf.constant(1.0), seed=tf.constant(2, tf.int64), "
        f"end_id=tf.constant({tokenizer.sep_id})",
        imports=", tensorflow_text",
    )
    assert got["text"] == [tokenizer.decode(row) for row in want]


# TFLite: prefill and decode signatures, and the driver an app would port.


@pytest.fixture(scope="module")
def tflite(tmp_path_factory, exported):
    model = exported[0]
    folder = tmp_path_factory.mktemp("tflite")
    path = export.to_tflite(model, folder / "lm.tflite", max_length=24)
    return model, path


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[1:2], [[7] * 13, [9]]])
def test_tflite_greedy_gives_the_tokens_and_logits_of_keras(tflite, prompts):
    model, path = tflite
    want, want_logits = generation.generate(
        model, prompts, 8, return_logits=True
    )
    generator = export.TFLiteGenerator(path)
    assert generator.generate(prompts, 8) == want
    # Step by step through the signatures, feeding Keras' tokens.
    lengths = np.array([len(p) for p in prompts], "int32")
    logits, caches = generator.prefill(right_padded(prompts), lengths)
    tokens = np.array(want, "int32")
    for step in range(8):
        np.testing.assert_allclose(logits, want_logits[:, step], atol=1e-4)
        logits, caches = generator.decode(
            tokens[:, step], lengths + step, caches
        )


def test_tflite_file_has_three_builtin_signatures(tflite):
    from ai_edge_litert.interpreter import Interpreter

    model, path = tflite
    signatures = Interpreter(model_path=str(path)).get_signature_list()
    assert set(signatures) == {"serving_default", "prefill", "decode"}
    caches = [f"cache_{i}" for i in range(SIZES["num_layers"])]
    assert sorted(signatures["decode"]["inputs"]) == sorted(
        [*caches, "positions", "token_ids"]
    )
    assert sorted(signatures["decode"]["outputs"]) == sorted(
        [*caches, "logits"]
    )
    ids = right_padded(PROMPTS)
    assert export.parity(model, ids, tflite=path)["tflite"] <= 1e-4


def test_tflite_refuses_prompts_past_its_maximum(tflite):
    _, path = tflite
    generator = export.TFLiteGenerator(path)
    assert generator.max_length == 24
    assert len(generator.generate([[5] * 20], 4)[0]) == 4  # exactly full
    with pytest.raises(ValueError, match="max_length=24"):
        generator.generate([[5] * 20, [6]], 5)
    with pytest.raises(ValueError, match="max_length=24"):
        generator.generate([[5] * 30], 1)
    for settings, message in (
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 3, "temperature": 0}, "temperature"),
        ({"end_id": None, "max_new_tokens": 0}, "max_new_tokens"),
    ):
        with pytest.raises(ValueError, match=message):
            generator.generate([[5]], **{"max_new_tokens": 2, **settings})
    with pytest.raises(ValueError, match="padding id 0"):
        generator.generate([[5, 0, 6]], 2)


def test_tflite_sampling_is_seeded_and_keeps_to_the_top_k(tflite):
    model, path = tflite
    generator = export.TFLiteGenerator(path)
    first = generator.generate(PROMPTS, 8, top_k=3, seed=4)
    assert first == generator.generate(PROMPTS, 8, top_k=3, seed=4)
    assert first != generator.generate(PROMPTS, 8, top_k=3, seed=5)
    # Each draw is among the top 3 of Keras' logits for the same text.
    for prompt, continuation in zip(PROMPTS, first, strict=True):
        text = np.array([prompt + continuation], "int32")
        logits = np.array(model(text))[0, len(prompt) - 1 : -1]
        logits[:, 0] = -np.inf
        top = np.argsort(-logits, axis=-1)[:, :3]
        assert (top == np.array(continuation)[:, None]).any(axis=1).all()


def test_tflite_end_id_stops_each_row(tflite):
    model, path = tflite
    free = generation.generate(model, PROMPTS, 8)
    end_id = free[2][1]
    want = generation.generate(model, PROMPTS, 8, end_id=end_id)
    generator = export.TFLiteGenerator(path)
    assert generator.generate(PROMPTS, 8, end_id=end_id) == want


def test_tflite_generation_settings_are_checked(tmp_path):
    encoder = models.build_encoder(VOCABULARY, **SIZES)
    with pytest.raises(ValueError, match="max_length is the key/value"):
        export.to_tflite(encoder, tmp_path / "encoder.tflite", max_length=8)
    path = export.to_tflite(encoder, tmp_path / "encoder.tflite")
    with pytest.raises(ValueError, match="no prefill and decode"):
        export.TFLiteGenerator(path)


@pytest.mark.parametrize("quantization", ["dynamic_range", "int8"])
def test_quantized_tflite_generates(tmp_path, quantization):
    """int8 weights: a smaller file, prefill and decode logits near
    float32's. (The converter keeps tensors under 1,024 values in float32:
    a wider model.) Full int8 (activations too, calibrated on all three
    signatures) converts and runs, but is far off, as for the masked LM
    in benchmarks/README.md: only finite logits are asked of it."""
    keras.utils.set_random_seed(6)
    sizes = {**SIZES, "hidden_dim": 64, "intermediate_dim": 128}
    model = models.build_causal_lm(VOCABULARY, **sizes)
    plain = export.to_tflite(model, tmp_path / "lm.tflite", max_length=24)
    rng = np.random.default_rng(0)
    small = export.to_tflite(
        model,
        tmp_path / f"lm_{quantization}.tflite",
        quantization=quantization,
        representative_data=[rng.integers(1, VOCABULARY, (4, 12))] * 3,
        max_length=24,
    )
    assert small.stat().st_size < plain.stat().st_size
    lengths = np.array([len(p) for p in PROMPTS], "int32")
    gaps = []
    plain, small = export.TFLiteGenerator(plain), export.TFLiteGenerator(small)
    want, want_caches = plain.prefill(right_padded(PROMPTS), lengths)
    got, caches = small.prefill(right_padded(PROMPTS), lengths)
    gaps.append(np.abs(got - want).max() / np.abs(want).max())
    token = np.array([5, 6, 7, 8], "int32")
    want, _ = plain.decode(token, lengths, want_caches)
    got, _ = small.decode(token, lengths, caches)
    gaps.append(np.abs(got - want).max() / np.abs(want).max())
    assert np.isfinite(got).all()
    if quantization == "dynamic_range":
        assert max(gaps) < 0.1, gaps
    assert len(small.generate(PROMPTS, 5)) == 4


def test_alibi_and_a_relative_bias_generate_in_both_exports(tmp_path):
    """No position table: ALiBi and a causal relative bias in every block,
    decoding from a cache in the SavedModel's `generate` and in TFLite's
    prefill and decode, token for token and logit for logit as Keras."""
    keras.utils.set_random_seed(4)
    model = models.build_causal_lm(
        VOCABULARY,
        **SIZES,
        positions="alibi",
        score="relative(8, 32, causal)",
    )
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "relative_bias" in weight.path:
            weight.assign(rng.normal(size=weight.shape))
    want, want_logits = generation.generate(
        model, PROMPTS, 6, return_logits=True
    )
    saved = export.to_saved_model(model, tmp_path / "lm")
    served = tf.saved_model.load(str(saved)).signatures["generate"](
        token_ids=tf.constant(right_padded(PROMPTS)),
        max_new_tokens=tf.constant(6),
        top_k=tf.constant(1),
        top_p=tf.constant(1.0),
        temperature=tf.constant(1.0),
        seed=tf.constant(0, tf.int64),
        end_id=tf.constant(-1),
    )
    assert cut_rows(served["token_ids"], served["lengths"].numpy()) == want
    generator = export.TFLiteGenerator(
        export.to_tflite(model, tmp_path / "lm.tflite", max_length=24)
    )
    assert generator.generate(PROMPTS, 6) == want
    lengths = np.array([len(p) for p in PROMPTS], "int32")
    logits, caches = generator.prefill(right_padded(PROMPTS), lengths)
    for step in range(6):
        np.testing.assert_allclose(logits, want_logits[:, step], atol=1e-4)
        logits, caches = generator.decode(
            np.array(want, "int32")[:, step], lengths + step, caches
        )
