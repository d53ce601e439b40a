"""The `export` and `predict` commands of `keras-dynmask`."""

import json
import pathlib

import numpy as np


def tokenizer_for(given, near):
    """The `WordPieceTokenizer` of the vocabulary file given, or of one
    found beside `near` (a model folder, a version folder, or the text
    model's `text/VERSION/`); `None` when there is none."""
    path = None
    if given:
        path = pathlib.Path(given)
        if not path.exists():
            raise ValueError(f"No vocabulary at {given!r}")
    for folder in () if given else (near, *near.parents[:3]):
        if (folder / "vocabulary.txt").exists():
            path = folder / "vocabulary.txt"
            break
    if path is None:
        return None
    from keras_dynmask.tf.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.load(path)


def artifact_at(path):
    """The model file or SavedModel version folder that `path` names (a
    model folder gives its latest version, as TF Serving loads it)."""
    from keras_dynmask.tf import export

    artifact = pathlib.Path(path)
    if not artifact.exists():
        raise ValueError(f"No SavedModel, TFLite or .keras file at {path!r}")
    if artifact.is_dir():
        version = export.latest_version(artifact)
        if version is None:
            raise ValueError(
                f"No SavedModel in {path!r}: it has no saved_model.pb and "
                "no numbered version folder"
            )
        return version
    if artifact.suffix not in (".tflite", ".keras"):
        raise ValueError(
            f"{path!r} is not a SavedModel folder, a .tflite file or a "
            ".keras file"
        )
    return artifact


def _load_keras(path):
    """A `.keras` model; the package's classes are registered first (the
    command loads the package lazily)."""
    import keras

    import keras_dynmask.models  # noqa: F401

    return keras.saving.load_model(path)


def run_export(args):
    from keras_dynmask.tf import export

    if not args.saved_model and not args.tflite:
        raise ValueError(
            "Nothing to do: pass --saved-model DIR, --tflite FILE or both"
        )
    if args.version is not None and not args.saved_model:
        raise ValueError("--version numbers a SavedModel: pass --saved-model")
    source = pathlib.Path(args.model)
    if source.suffix != ".keras" or not source.is_file():
        raise ValueError(f"No .keras model file at {args.model!r}")
    model = _load_keras(source)
    tokenizer = tokenizer_for(args.vocabulary, source.parent)
    if tokenizer is not None:
        sample = tokenizer.encode(
            ["Return the [MASK] of items in a list.", "The [MASK] is here."]
        )
    else:
        sample = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], "int32")
    if set(export.input_signature(model)) == {"source_ids", "target_ids"}:
        # An encoder-decoder: the same sample on both sides.
        sample = {"source_ids": sample, "target_ids": sample}
    saved = tflite = None
    if args.saved_model:
        saved = export.to_saved_model(
            model, args.saved_model, version=args.version
        )
        print(f"SavedModel (token ids): {saved}")
        if tokenizer is not None and list(export.input_signature(model)) == [
            "token_ids"
        ]:
            text = export.to_text_saved_model(
                model,
                tokenizer,
                pathlib.Path(args.saved_model) / "text",
                version=int(saved.name),
            )
            print(f"SavedModel (raw text, needs tensorflow_text): {text}")
    if args.tflite:
        tflite = export.to_tflite(
            model,
            args.tflite,
            quantization=args.quantization,
            representative_data=[sample],
            max_length=args.max_length,
        )
        print(f"TFLite: {tflite} ({tflite.stat().st_size:,} bytes)")
    gaps = export.parity(model, sample, saved_model=saved, tflite=tflite)
    for name, gap in gaps.items():
        print(f"Largest difference from Keras, {name}: {gap:.2e}")


def run_predict(args):
    artifact = artifact_at(args.artifact)
    tokenizer = tokenizer_for(args.vocabulary, artifact)
    if args.text is not None and tokenizer is None:
        raise ValueError(
            "--text needs the model's vocabulary.txt: none was found beside "
            f"{str(artifact)!r}; pass --vocabulary"
        )
    ids = (
        tokenizer.encode([args.text])
        if args.text is not None
        else np.array([args.ids], "int32")
    )
    outputs = _run(artifact, ids, args.text)
    if args.json:
        print(
            json.dumps(
                {
                    "token_ids": ids.tolist(),
                    "outputs": {
                        k: np.asarray(v).tolist() for k, v in outputs.items()
                    },
                }
            )
        )
        return
    shown = args.text if args.text is not None else args.ids
    print("\n".join(describe(outputs, ids, tokenizer, shown, args.top_k)))


def _run(artifact, ids, text):
    """The artifact's outputs `{name: array}` for one example."""
    if artifact.suffix == ".tflite":
        from keras_dynmask.tf.export import tflite_runner

        return tflite_runner(artifact)(token_ids=ids)
    if artifact.suffix == ".keras":
        outputs = _load_keras(artifact).predict(ids, verbose=0)
        if not isinstance(outputs, dict):
            outputs = {"outputs": outputs}
        return {k: np.asarray(v) for k, v in outputs.items()}
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the raw-text model's ops)

    signature = tf.saved_model.load(str(artifact)).signatures["serving_default"]
    takes = set(signature.structured_input_signature[1])
    if "text" in takes:
        if text is None:
            raise ValueError(
                f"{str(artifact)!r} is a raw-text model: pass --text"
            )
        result = signature(text=tf.constant([text]))
    else:
        result = signature(token_ids=tf.constant(ids))
    return {k: v.numpy() for k, v in result.items()}


def describe(outputs, ids, tokenizer, shown, top_k=5):
    """Readable lines for one example's outputs: the `top_k` guesses per
    `[MASK]` of a masked-LM, per position of `(T, V)` logits, or of a
    `(C,)` score vector; other outputs as values."""
    if {"logits", "mask_positions", "mask_weights"} <= set(outputs):
        from keras_dynmask.app.pretraining import describe_guesses

        return describe_guesses(outputs, tokenizer, shown, top_k)
    lines = [f"Input: {shown}"]
    for name, value in outputs.items():
        value = np.asarray(value)[0]
        if value.dtype.kind != "f" or value.ndim not in (1, 2):
            lines.append(f"  {name}: {value.tolist()}")
        elif value.ndim == 1:
            lines.append(f"  {name}: {_top(value, top_k, None)}")
        else:
            lines.append(f"  {name}, the top {top_k} per position:")
            for position, scores in enumerate(value):
                token = _token(tokenizer, ids[0, position])
                guesses = _top(scores, top_k, tokenizer)
                lines.append(f"    {position} {token}: {guesses}")
    return lines


def _top(scores, top_k, tokenizer):
    """`"a (0.31), b (0.20), ..."`: the `top_k` entries, as probabilities
    (scores that are not already a distribution are soft-maxed)."""
    scores = np.asarray(scores, "float64")
    if not (scores.min() >= 0 and abs(scores.sum() - 1) < 1e-3):
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    best = np.argsort(-scores)[:top_k]
    return ", ".join(f"{_token(tokenizer, i)} ({scores[i]:.2f})" for i in best)


def _token(tokenizer, token_id):
    if tokenizer is None or not 0 <= token_id < tokenizer.vocabulary_size:
        return str(int(token_id))
    return tokenizer.vocabulary[token_id]
