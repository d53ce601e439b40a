"""Generation: the whole loop compiled, against the step-by-step loop.

A causal LM of the builder's default size (4 blocks, hidden 256, 4 heads,
vocabulary 8,000, random weights) continues six prompts of 5 to 32 tokens
by 96 new tokens, sampling among the top 20 with a seed, under
TensorFlow:

- compiled: `generation.generate(..., compiled=True)`, prefill and every
  decode step in one XLA-compiled `tf.function` (`ops.while_loop`);
- step by step (the anchor, generation as it was before): a traced
  prefill and a traced one-token step called from Python, with the
  sampling in between.

Both give the same tokens (checked). Then, B = 1: TFLite's `decode` (the
`TFLiteGenerator` loop over `prefill` and `decode`, XNNPACK, float32 and
dynamic-range int8 weights) against compiled Keras, per new token. Median
of interleaved rounds after warm-up (which includes the compilation).

Last, with the causal LM `examples/text_generation.py` trains and saves
(saved_models/text_generation), next-token accuracy on held-out text of
Keras, TFLite float32 and dynamic-range int8.
"""

import pathlib
import tempfile

import numpy as np

import keras_dynmask as kd
from benchmarks import targets
from benchmarks.timing import interleaved_medians
from keras_dynmask.models import generation
from keras_dynmask.tf import export

VOCABULARY = 8000
PROMPT_LENGTHS = (5, 9, 14, 20, 27, 32)
NEW_TOKENS = 96


def _model():
    import keras

    keras.utils.set_random_seed(0)
    return kd.models.build_causal_lm(VOCABULARY)


def run(quick=False):
    model = _model()
    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(1, VOCABULARY, length).tolist()
        for length in PROMPT_LENGTHS
    ]

    def generate(compiled):
        return generation.generate(
            model, prompts, NEW_TOKENS, top_k=20, seed=1, compiled=compiled
        )

    if generate(True) != generate(False):
        raise AssertionError("compiled and step-by-step tokens differ")
    repeats, warmup = (5, 1) if quick else (15, 2)
    seconds = interleaved_medians(
        {
            "compiled": lambda: generate(True),
            "step by step": lambda: generate(False),
        },
        repeats,
        warmup,
    )
    speedup = seconds["step by step"] / seconds["compiled"]
    ms_per_token = {
        name: value * 1e3 / NEW_TOKENS for name, value in seconds.items()
    }
    targets.record(
        f"compiled generation vs step by step, B = {len(prompts)}, "
        f"{NEW_TOKENS} new tokens (TF)",
        f"{seconds['compiled'] * 1e3:.0f} ms",
        f"{speedup:.2f}x faster",
        ">= 5x faster",
    )
    lines = [
        f"### Generation, B = {len(prompts)}, {NEW_TOKENS} new tokens, "
        f"top-k 20 (median of {repeats}, {warmup} warm-up)",
        "",
        "| loop | ms / call | ms / new token | x step-by-step speed |",
        "|---|---:|---:|---:|",
    ]
    for name, value in seconds.items():
        lines.append(
            f"| {name} | {value * 1e3:.0f} | {ms_per_token[name]:.2f} | "
            f"{seconds['step by step'] / value:.2f} |"
        )
    lines += [""] + _tflite_speed(model, prompts[-1], quick)
    lines += [""] + _quantized_accuracy()
    return lines


def _tflite_speed(model, prompt, quick):
    """TFLite `decode` per token against compiled Keras, B = 1."""
    repeats, warmup = (5, 1) if quick else (15, 2)
    greedy = generation.generate(model, [prompt], NEW_TOKENS)
    functions = {
        "Keras compiled": lambda: generation.generate(
            model, [prompt], NEW_TOKENS
        )
    }
    with tempfile.TemporaryDirectory() as folder:
        files = _tflite_files(model, folder, len(prompt) + NEW_TOKENS)
        for name, path in files.items():
            generator = export.TFLiteGenerator(path)
            if name == "TFLite float32":
                tokens = generator.generate([prompt], NEW_TOKENS)
                if tokens != greedy:
                    raise AssertionError("TFLite and Keras tokens differ")
            functions[name] = lambda generator=generator: generator.generate(
                [prompt], NEW_TOKENS
            )
        seconds = interleaved_medians(functions, repeats, warmup)
    base = seconds["Keras compiled"]
    targets.record(
        f"TFLite decode per token vs compiled Keras, B = 1, prompt "
        f"{len(prompt)} + {NEW_TOKENS} tokens",
        f"{seconds['TFLite float32'] * 1e3 / NEW_TOKENS:.2f} ms / token",
        f"{seconds['TFLite float32'] / base:.2f}x its time "
        f"(dynamic-range {seconds['TFLite dynamic_range'] / base:.2f}x)",
        "<= 1.0x",
    )
    lines = [
        f"### Generation at B = 1, {len(prompt)}-token prompt, {NEW_TOKENS} "
        f"new tokens, greedy (median of {repeats}, {warmup} warm-up)",
        "",
        "| runtime | ms / new token | x Keras compiled time |",
        "|---|---:|---:|",
    ]
    for name, value in seconds.items():
        lines.append(
            f"| {name} | {value * 1e3 / NEW_TOKENS:.2f} | {value / base:.2f} |"
        )
    return lines


def _quantized_accuracy(model_dir="saved_models/text_generation"):
    """Held-out next-token accuracy of the trained LM, Keras and TFLite."""
    folder = pathlib.Path(model_dir)
    if not (folder / "model.keras").exists():
        return [
            f"(No trained causal LM in {model_dir}: run `python "
            "examples/text_generation.py` for the quantized accuracy row.)"
        ]
    import keras

    from keras_dynmask.app import corpus
    from keras_dynmask.tf import data
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    model = keras.saving.load_model(folder / "model.keras")
    tokenizer = WordPieceTokenizer.load(folder / "vocabulary.txt")
    _, held_out = corpus.split_documents(corpus.default_corpus())
    batches = data.batched(data.sequences(tokenizer, held_out, 65), 16)
    batches = [np.asarray(b) for b in batches.take(8)]
    accuracy = {
        "Keras float32": _accuracy(lambda ids: np.asarray(model(ids)), batches)
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, path in _tflite_files(model, folder).items():
            run = export.tflite_runner(path)
            accuracy[name] = _accuracy(
                lambda ids, run=run: run(token_ids=ids)["outputs"], batches
            )
    drop = accuracy["TFLite float32"] - accuracy["TFLite dynamic_range"]
    targets.record(
        "dynamic-range int8 TFLite LM: held-out next-token accuracy",
        f"{accuracy['TFLite dynamic_range']:.3f}",
        f"float32 {accuracy['TFLite float32']:.3f} (int8 "
        f"{-drop * 100:+.1f} points)",
        "within 1 point",
    )
    lines = [
        f"### Causal LM next-token accuracy, {len(batches)} held-out "
        "batches of 16 x 64",
        "",
        "| model | accuracy |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.3f} |" for name, value in accuracy.items()]
    return lines


def _tflite_files(model, folder, max_length=None):
    """`{"TFLite float32": path, "TFLite dynamic_range": path}`, written
    into `folder`."""
    return {
        f"TFLite {quantization or 'float32'}": export.to_tflite(
            model,
            pathlib.Path(folder) / f"{quantization}.tflite",
            quantization=quantization,
            max_length=max_length,
        )
        for quantization in (None, "dynamic_range")
    }


def _accuracy(logits_of, batches):
    """Next-token accuracy over real (non-padding) targets."""
    right = total = 0
    for ids in batches:
        inputs, wanted = ids[:, :-1].astype("int32"), ids[:, 1:]
        guesses = np.asarray(logits_of(inputs)).argmax(-1)
        real = wanted != 0
        right += int(((guesses == wanted) & real).sum())
        total += int(real.sum())
    return right / total
