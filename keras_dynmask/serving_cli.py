"""The `export` and `predict` commands of `keras-dynmask`."""

import json
import pathlib

import numpy as np


def _vocabulary(given, near):
    """The vocabulary file given, or one found beside `near`."""
    if given:
        path = pathlib.Path(given)
        if not path.exists():
            raise ValueError(f"No vocabulary at {given!r}")
        return path
    for folder in (near.parent, near.parent.parent):
        if (folder / "vocabulary.txt").exists():
            return folder / "vocabulary.txt"
    return None


def run_export(args):
    import keras

    from keras_dynmask import export
    from keras_dynmask.tokenizer import WordPieceTokenizer

    if not args.saved_model and not args.tflite:
        raise ValueError(
            "Nothing to do: pass --saved-model DIR, --tflite FILE or both"
        )
    source = pathlib.Path(args.model)
    if not source.exists():
        raise ValueError(f"No model at {args.model!r}")
    model = keras.saving.load_model(source)
    vocabulary = _vocabulary(args.vocabulary, source)
    tokenizer = WordPieceTokenizer.load(vocabulary) if vocabulary else None
    if tokenizer is not None:
        sample = tokenizer.encode(
            ["Return the [MASK] of items in a list.", "The [MASK] is here."]
        )
    else:
        sample = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], "int32")
    saved = tflite = None
    if args.saved_model:
        saved = export.to_saved_model(
            model, args.saved_model, tokenizer=tokenizer
        )
        print(f"SavedModel: {saved}")
    if args.tflite:
        tflite = export.to_tflite(
            model,
            args.tflite,
            quantization=args.quantization,
            representative_data=[sample],
        )
        print(f"TFLite: {tflite} ({tflite.stat().st_size:,} bytes)")
    gaps = export.parity(model, sample, saved_model=saved, tflite=tflite)
    for name, gap in gaps.items():
        print(f"Largest difference from Keras, {name}: {gap:.2e}")


def run_predict(args):
    artifact = pathlib.Path(args.artifact)
    if not artifact.exists():
        raise ValueError(f"No SavedModel or TFLite file at {args.artifact!r}")
    tokenizer = None
    if args.text is not None:
        from keras_dynmask.tokenizer import WordPieceTokenizer

        vocabulary = _vocabulary(args.vocabulary, artifact)
        if vocabulary is None:
            raise ValueError("--text needs a vocabulary: pass --vocabulary")
        tokenizer = WordPieceTokenizer.load(vocabulary)
        ids = tokenizer.encode([args.text])
    else:
        ids = np.array([args.ids], "int32")
    if artifact.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(artifact)).get_signature_runner()
        outputs = runner(token_ids=ids)
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(artifact))
        result = loaded.signatures["serving_default"](
            token_ids=tf.constant(ids)
        )
        outputs = {k: v.numpy() for k, v in result.items()}
    print(
        json.dumps(
            {
                "token_ids": ids.tolist(),
                "outputs": {
                    k: np.asarray(v).round(5).tolist()
                    for k, v in outputs.items()
                },
            }
        )
    )
