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

Both give the same tokens (checked). Median of interleaved rounds after
warm-up (which includes the compilation).
"""

import numpy as np

import keras_dynmask as kd
from benchmarks import targets
from benchmarks.timing import interleaved_medians
from keras_dynmask.models import generation

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
    return lines
