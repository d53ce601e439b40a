"""Run under KERAS_BACKEND=tensorflow by test_backends.py: load a `.keras`
model trained on another backend, export it, and report differences."""

import json
import pathlib
import sys

import numpy as np

import keras_dynmask as kd  # noqa: F401  (registers the layers)
from keras_dynmask.tf import export


def main(folder):
    import keras

    folder = pathlib.Path(folder)
    assert keras.backend.backend() == "tensorflow"
    model = keras.saving.load_model(folder / "model.keras")
    report = {}
    for name in sorted(p.stem for p in folder.glob("ids_*.npy")):
        ids = np.load(folder / f"{name}.npy")
        trained = np.load(folder / f"{name.replace('ids', 'logits')}.npy")
        here = np.asarray(model(ids))
        report[f"{name} keras"] = float(np.abs(here - trained).max())
    saved = export.to_saved_model(model, folder / "saved")
    tflite = export.to_tflite(model, folder / "model.tflite")
    for name in sorted(p.stem for p in folder.glob("ids_*.npy")):
        ids = np.load(folder / f"{name}.npy")
        trained = np.load(folder / f"{name.replace('ids', 'logits')}.npy")
        gaps = export.parity(model, ids, saved_model=saved, tflite=tflite)
        here = np.asarray(model(ids))
        keras_gap = float(np.abs(here - trained).max())
        for artifact, gap in gaps.items():
            report[f"{name} {artifact}"] = keras_gap + gap
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
