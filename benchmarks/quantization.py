"""TFLite quantization of the pretrained masked-LM: size and accuracy.

Uses the model `keras-dynmask pretrain` wrote (saved_models/masked_lm). The
held-out sequences get the fixed evaluation masks; Keras and each TFLite
file then fill the `[MASK]` positions, and we report the file size, the
largest logit difference from Keras and the held-out fill accuracy.
"""

import pathlib
import tempfile

import numpy as np

from keras_dynmask.app import corpus
from keras_dynmask.app import pretraining
from keras_dynmask.tf import data
from keras_dynmask.tf import export


def run(model_dir="saved_models/masked_lm", batches=8):
    """Returns markdown lines, or a note when no pretrained model exists."""
    if not (pathlib.Path(model_dir) / "model.keras").exists():
        return [f"(No pretrained model in {model_dir}: run `make demo`.)"]
    from ai_edge_litert.interpreter import Interpreter

    model, tokenizer = pretraining.load(model_dir)
    _, held_out = corpus.split_documents(corpus.default_corpus())
    sequences = data.sequences(tokenizer, held_out, 64)
    inputs, targets = [], []
    for batch in data.batched(sequences, 16).take(batches):
        masked = model.evaluation_masking(batch, training=True)
        ids = masked["token_ids"].numpy()
        inputs.append(ids)
        targets.append(np.where(ids == tokenizer.mask_id, batch.numpy(), -1))

    def accuracy(predict):
        hits = total = 0
        for ids, target in zip(inputs, targets, strict=True):
            out = predict(ids)
            guesses = np.asarray(out["logits"]).argmax(-1)
            rows = np.arange(ids.shape[0])[:, None]
            truth = target[rows, np.asarray(out["mask_positions"])]
            real = np.asarray(out["mask_weights"]) > 0
            hits += int((guesses == truth)[real].sum())
            total += int(real.sum())
        return hits / max(total, 1)

    keras_accuracy = accuracy(lambda ids: model.predict(ids, verbose=0))
    lines = [
        f"### TFLite quantization of the pretrained masked-LM "
        f"({sum(len(i) for i in inputs)} held-out sequences)",
        "",
        "| model | size (KiB) | largest logit difference | fill accuracy |",
        "|---|---:|---:|---:|",
        f"| Keras (float32) | - | - | {keras_accuracy:.3f} |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for quantization in export.QUANTIZATIONS:
            path = export.to_tflite(
                model,
                pathlib.Path(folder) / f"{quantization}.tflite",
                quantization=quantization,
                representative_data=inputs[:4],
            )
            runner = Interpreter(model_path=str(path)).get_signature_runner()

            def predict(ids, runner=runner):
                return runner(token_ids=ids)

            gap = max(
                export.parity(model, ids, tflite=path)["tflite"]
                for ids in inputs
            )
            lines.append(
                f"| TFLite {quantization or 'float32'} | "
                f"{path.stat().st_size / 1024:,.0f} | {gap:.2e} | "
                f"{accuracy(predict):.3f} |"
            )
    return lines
