"""Inference latency: SavedModel against TFLite (XNNPACK), B = 1, T = 128.

Uses the model `keras-dynmask pretrain` wrote (saved_models/masked_lm),
exported afresh in one run: the SavedModel's `serving_default` called from
Python, and each TFLite file through `ai_edge_litert`'s signature runner.
One input of 128 ids with two `[MASK]`s; median of 50 calls after 10
warm-up calls; ratios are to the SavedModel.
"""

import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks.timing import median_seconds
from keras_dynmask.app import pretraining
from keras_dynmask.tf import export


def run(model_dir="saved_models/masked_lm", quick=False):
    if not (pathlib.Path(model_dir) / "model.keras").exists():
        return [f"(No pretrained model in {model_dir}: run `make demo`.)"]
    from ai_edge_litert.interpreter import Interpreter

    repeats, warmup = (10, 3) if quick else (50, 10)
    model, tokenizer = pretraining.load(model_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(
        len(tokenizer.special_ids), tokenizer.vocabulary_size, (1, 128)
    ).astype("int32")
    ids[0, 0], ids[0, -1] = tokenizer.cls_id, tokenizer.sep_id
    ids[0, [10, 70]] = tokenizer.mask_id
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        saved = export.to_saved_model(model, folder / "serving")
        serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
        tensor = tf.constant(ids)
        rows.append(
            (
                "SavedModel",
                median_seconds(
                    lambda: serve(token_ids=tensor)["logits"].numpy(),
                    repeats,
                    warmup,
                ),
                None,
            )
        )
        for quantization in export.QUANTIZATIONS:
            path = export.to_tflite(
                model,
                folder / f"{quantization}.tflite",
                quantization=quantization,
                representative_data=[ids],
            )
            runner = Interpreter(model_path=str(path)).get_signature_runner()
            seconds = median_seconds(
                lambda runner=runner: runner(token_ids=ids), repeats, warmup
            )
            name = f"TFLite {quantization or 'float32'}"
            rows.append((name, seconds, path.stat().st_size))
    base = rows[0][1]
    lines = [
        f"### Inference latency, B=1, T=128 (median of {repeats}, "
        f"{warmup} warm-up)",
        "",
        "| artifact | ms / call | x SavedModel speed | size (KiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds, size in rows:
        size_text = "-" if size is None else f"{size / 1024:,.0f}"
        lines.append(
            f"| {name} | {seconds * 1e3:.2f} | {base / seconds:.2f} | "
            f"{size_text} |"
        )
    return lines
