"""Export for serving: a SavedModel in TF Serving's layout, and TFLite.

Every exported graph recomputes its masks from each request's own ids, so
any batch size and sequence length are accepted. TensorFlow-specific by
design; layers never import this module.

Example:

>>> import pathlib, tempfile, numpy as np, keras_dynmask as kd
>>> from keras_dynmask.tf import export
>>> model = kd.models.build_encoder(
...     50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "encoder"
>>> saved = export.to_saved_model(model, folder)
>>> saved.name
'1'
>>> gaps = export.parity(model, np.array([[2, 5, 6, 3]]), saved_model=saved)
>>> gaps["saved_model"] < 1e-5
True
"""

import os
import pathlib
import re
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_dynmask.core._checks import check_int
from keras_dynmask.models.causal_lm import CausalLM
from keras_dynmask.models.seq2seq import Seq2Seq
from keras_dynmask.tf.generation_export import GenerationModule
from keras_dynmask.tf.quiet import held_back_stderr
from keras_dynmask.tf.tflite_generation import TFLiteGenerator  # noqa: F401
from keras_dynmask.tf.tflite_generation import calibration_for_generation
from keras_dynmask.tf.tflite_generation import tflite_signatures

QUANTIZATIONS = (None, "dynamic_range", "float16", "int8")


def input_signature(model):
    """`{name: tf.TensorSpec}` of a token-id model's inputs, batch and length
    free.

    Raises:
        ValueError: when an input is not integer ids.
    """
    inputs = model.inputs if hasattr(model, "inputs") and model.inputs else []
    if not inputs:
        # A subclassed model such as MaskedLM takes token ids.
        return {
            "token_ids": tf.TensorSpec((None, None), tf.int32, name="token_ids")
        }
    specs = {}
    for tensor in inputs:
        name = tensor.name
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "int" not in dtype:
            raise ValueError(
                "Export expects a model whose inputs are token ids and "
                f"per-example ints; input {name!r} has dtype {dtype}"
            )
        shape = (None,) * len(tensor.shape)
        specs[name] = tf.TensorSpec(shape, tf.int32, name=name)
    return specs


def _takes_dict(model):
    """Whether the model is called with a dict of inputs."""
    try:
        return isinstance(model.input, dict)
    except AttributeError:  # a subclassed model, called on token ids
        return False


def _call(model, inputs):
    """Calls the model on `{name: tensor}` the way it was built."""
    if _takes_dict(model):
        return model(inputs, training=False)
    return model(next(iter(inputs.values())), training=False)


def _outputs(model, inputs):
    outputs = _call(model, inputs)
    if isinstance(outputs, dict):
        return dict(outputs)
    return {"outputs": outputs}


def _archive(model, specs):
    """An export archive whose `serving_default` takes and gives names."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(inputs):
        return _outputs(model, inputs)

    archive.add_endpoint("serving_default", serve, input_signature=[specs])
    return archive


def to_saved_model(model, directory, version=None, generation=None):
    """Writes a SavedModel into TF Serving's layout, `directory/VERSION/`.

    Its signature `serving_default` takes the model's inputs by name
    (`token_ids` `(B, T)` int32, plus per-example ints such as
    `prefix_length` `(B,)`), any `B` and `T`, and gives outputs by name
    (the model's dict keys, or `outputs`). It holds only TensorFlow's own
    ops: it loads with `tf.saved_model.load` in a process that imports
    nothing else, and in a stock TF Serving.

    A `CausalLM` also gets a `generate` signature: `token_ids` `(B, T)`
    right-padded prompts in; `token_ids` `(B, max_new_tokens)` new ids
    (the padding id after a row's `end_id`) and `lengths` `(B,)` out; the
    scalar inputs `max_new_tokens`, `top_k` (`1` greedy, `0` no limit),
    `top_p`, `temperature`, `seed` and `end_id` (`-1` none) have defaults
    (`generation_export.DEFAULTS`). The same tokens as
    `generation.generate`. A `Seq2Seq`'s `generate` takes `source_ids`
    `(B, S)` (right-padded; the encoder runs once) and its target prompts
    as `token_ids` (each at least its start id), with the same settings
    and outputs.

    Args:
        model: a Keras model whose inputs are token ids.
        directory: the model's folder (TF Serving's model base path);
            versions are numbered subfolders. Its parent must exist.
        version: int, or `None` for the next free number.
        generation: dict overriding the `generate` signature's defaults
            (a `CausalLM` or `Seq2Seq` only), e.g. `{"max_new_tokens":
            64}`.

    Returns:
        The path of the written version folder. The folder appears whole
        or not at all: it is written beside it and renamed at the end.

    Raises:
        ValueError: for inputs that are not token ids, an existing version,
            a version folder given as `directory`, or a folder that cannot
            be written.
    """
    if isinstance(model, (CausalLM, Seq2Seq)):
        archive = GenerationModule(model, defaults=generation)
    else:
        _no_generation(model, generation)
        archive = _archive(model, input_signature(model))
    return _write_version(archive, directory, version)


def _no_generation(model, generation):
    if generation is not None:
        raise ValueError(
            "generation settings are for a CausalLM or a Seq2Seq, which get "
            f"a generate signature; received {type(model).__name__} "
            f"{model.name!r}"
        )


def to_text_saved_model(
    model, tokenizer, directory, version=None, generation=None
):
    """Writes a SavedModel that takes raw text, into `directory/VERSION/`.

    Its `serving_default` takes `text` `(B,)` strings, tokenizes them in
    the graph with tensorflow-text's WordPiece (`[MASK]` stays the mask
    token) and gives the outputs of `to_saved_model`. It is a model of its
    own because tensorflow-text's ops are not TensorFlow's: load it after
    `import tensorflow_text` (which registers them), or serve it with a
    TF Serving build that links tensorflow-text's ops. The ids model from
    `to_saved_model` needs neither.

    A `CausalLM` also gets a `generate` signature from text to text:
    `text` `(B,)` prompts in (each `[CLS]` and its ids, no `[SEP]`); the
    continuations' `text` `(B,)`, `token_ids` and `lengths` out; settings
    as for `to_saved_model`, `end_id` defaulting to `[SEP]`.

    Args:
        model: a Keras model whose only input is `token_ids`.
        tokenizer: a `keras_dynmask.tf.tokenizer.WordPieceTokenizer`.
        directory: the text model's folder; versions are numbered
            subfolders. Its parent must exist.
        version: int, or `None` for the next free number.
        generation: dict overriding the `generate` signature's defaults
            (a `CausalLM` only).

    Returns:
        The path of the written version folder (whole or not at all).
    """
    if isinstance(model, CausalLM):
        defaults = {"end_id": tokenizer.sep_id, **(generation or {})}
        archive = GenerationModule(model, tokenizer, defaults=defaults)
        return _write_version(archive, directory, version)
    _no_generation(model, generation)
    specs = input_signature(model)
    if list(specs) != ["token_ids"]:
        raise ValueError(
            "A text model tokenizes one input, token_ids; this model has "
            f"inputs {list(specs)}"
        )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tokenizer.module)

    def serve_text(text):
        token_ids = tokenizer.encode_tensor(text)
        return _outputs(model, {"token_ids": token_ids})

    archive.add_endpoint(
        "serving_default",
        serve_text,
        input_signature=[tf.TensorSpec((None,), tf.string, name="text")],
    )
    return _write_version(archive, directory, version)


def _write_version(archive, directory, version):
    """Writes `archive` to `directory/VERSION/`, whole or not at all."""
    directory = pathlib.Path(directory)
    if (directory / "saved_model.pb").exists():
        raise ValueError(
            f"{str(directory)!r} is a SavedModel version folder: pass the "
            f"model's folder above it ({str(directory.parent)!r}), and a "
            "version to choose its number"
        )
    _make_folder(directory)
    if version is None:
        taken = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
        version = max(taken, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"version must be a positive int, received version={version!r}"
        )
    target = directory / str(version)
    if target.exists():
        raise ValueError(
            f"Version {version} already exists in {str(directory)!r}; pass "
            "another version, or none for the next free one"
        )
    staging = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{version}-writing-", dir=directory)
    )
    try:
        archive.write_out(str(staging), verbose=False)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def latest_version(directory):
    """The SavedModel to load from a path, as TF Serving picks it: the
    path itself when it is a version folder, else its highest-numbered
    version subfolder, else `None`."""
    directory = pathlib.Path(directory)
    if (directory / "saved_model.pb").exists():
        return directory
    if not directory.is_dir():
        return None
    versions = [
        p
        for p in directory.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").exists()
    ]
    return max(versions, key=lambda p: int(p.name), default=None)


def to_tflite(
    model, path, quantization=None, representative_data=None, max_length=None
):
    """Converts a model to a TFLite file with TFLite builtin ops only.

    Its `serving_default` signature takes the model's inputs by name, any
    batch size and length. A `CausalLM` or a `Seq2Seq` also gets `prefill`
    and `decode` signatures, generation with the key/value cache as
    explicit inputs and outputs of `max_length` positions (see
    `tflite_generation`; `TFLiteGenerator` runs the loop).

    Args:
        model: a Keras model whose inputs are token ids.
        path: the `.tflite` file to write.
        quantization: `None` (float32), `"dynamic_range"` (int8 weights),
            `"float16"` (float16 weights) or `"int8"` (int8 weights and
            activations, calibrated on `representative_data`).
        representative_data: for `"int8"`: a list of input batches (arrays,
            or dicts of arrays keyed by input name).
        max_length: int, for a `CausalLM` or a `Seq2Seq`: the cache's
            positions, prompt and new tokens together (a seq2seq's target
            side; its sources may be any length). Defaults to `256`.

    Returns:
        The path written. The file appears whole or not at all.

    Raises:
        ValueError: for an unknown quantization, inputs that are not token
            ids, a folder that cannot be written, or a model that would need
            TensorFlow (Flex) ops, naming them.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization must be one of {QUANTIZATIONS}, received "
            f"quantization={quantization!r}"
        )
    path = pathlib.Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"path must end with .tflite, received {str(path)!r}")
    specs = input_signature(model)
    generating = isinstance(model, (CausalLM, Seq2Seq))
    if generating:
        max_length = check_int(
            "max_length", 256 if max_length is None else max_length, minimum=1
        )
    elif max_length is not None:
        raise ValueError(
            "max_length is the key/value cache of a CausalLM's or a "
            "Seq2Seq's prefill and decode signatures; received "
            f"max_length={max_length!r} for "
            f"{type(model).__name__} {model.name!r}"
        )
    if quantization == "int8":
        calibration = _representative(specs, representative_data)
        if generating:
            calibration = calibration_for_generation(
                model, calibration, max_length
            )
    if not path.parent.is_dir():
        raise ValueError(
            f"Cannot write to {str(path)!r}: the folder "
            f"{str(path.parent)!r} does not exist"
        )
    _make_folder(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent) as staging:
        if generating:
            module, signatures = tflite_signatures(model, max_length)
            tf.saved_model.save(module, staging, signatures=signatures)
        else:
            signatures = {"serving_default": None}
            _archive(model, specs).write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            staging, signature_keys=list(signatures)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            converter.representative_dataset = calibration
        try:
            # The int8 converter prints its settings (`fully_quantize: 0`)
            # from C++, and calibration runs TensorFlow's own deprecated
            # interpreter, which warns.
            with held_back_stderr(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter")
                flatbuffer = converter.convert()
        except Exception as error:  # the converter's own error types vary
            raise _conversion_error(error) from error
        written = pathlib.Path(staging) / path.name
        written.write_bytes(flatbuffer)
        os.replace(written, path)
    return path


def _representative(specs, batches):
    """Calibration batches for int8, as the converter wants them."""
    if not batches:
        raise ValueError(
            "quantization='int8' needs representative_data: a list of "
            "input batches to calibrate on"
        )
    names = list(specs)

    def generate():
        for batch in batches:
            if not isinstance(batch, dict):
                batch = {names[0]: batch}
            yield {k: np.asarray(v, "int32") for k, v in batch.items()}

    return generate


def _conversion_error(error):
    text = str(error)
    flex = sorted(set(re.findall(r"\btf\.(\w+)", text)))
    if "Flex" in text or "SELECT_TF_OPS" in text or flex:
        return ValueError(
            "The model needs TensorFlow ops that TFLite builtins lack "
            f"(Flex): {', '.join(flex) or 'see the converter message'}. "
            "Flex models do not run in the Python TFLite interpreters of "
            "TF 2.21 or ai-edge-litert 2.3."
        )
    return ValueError(f"TFLite conversion failed: {text.splitlines()[0]}")


def _make_folder(directory):
    """Creates `directory`, or says clearly why it cannot be written."""
    directory = pathlib.Path(directory)
    if not directory.parent.is_dir():
        raise ValueError(
            f"Cannot write to {str(directory)!r}: the folder "
            f"{str(directory.parent)!r} does not exist"
        )
    try:
        directory.mkdir(exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError("not writable")
        probe = tempfile.NamedTemporaryFile(dir=directory)
        probe.close()
    except OSError as error:
        raise ValueError(
            f"Cannot write to {str(directory)!r}: {error.strerror or error}"
        ) from error


def _as_inputs(specs, inputs):
    if isinstance(inputs, dict):
        return {k: np.asarray(v, "int32") for k, v in inputs.items()}
    return {next(iter(specs)): np.asarray(inputs, "int32")}


def parity(model, inputs, saved_model=None, tflite=None):
    """Largest differences between Keras and the exported artifacts.

    Args:
        model: the Keras model.
        inputs: a batch (array, or dict by input name).
        saved_model: a version folder from `to_saved_model`, or `None`.
        tflite: a file from `to_tflite`, or `None`.

    Returns:
        `{"saved_model": float, "tflite": float}` for the artifacts given:
        the largest absolute difference over every output.
    """
    specs = input_signature(model)
    feed = _as_inputs(specs, inputs)
    want = _call(model, feed)
    want = want if isinstance(want, dict) else {"outputs": want}
    want = {k: np.asarray(v) for k, v in want.items()}
    report = {}
    if saved_model is not None:
        loaded = tf.saved_model.load(str(saved_model))
        got = loaded.signatures["serving_default"](
            **{k: tf.constant(v) for k, v in feed.items()}
        )
        report["saved_model"] = _largest_difference(want, got)
    if tflite is not None:
        got = tflite_runner(tflite)(**feed)
        report["tflite"] = _largest_difference(want, got)
    return report


def tflite_runner(path):
    """The `serving_default` signature of a TFLite file, as a function of
    its named inputs, without the interpreter's "Created TensorFlow Lite
    XNNPACK delegate" line (printed from C++ when it first runs)."""
    from ai_edge_litert.interpreter import Interpreter

    with held_back_stderr():
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner("serving_default")

    def run(**inputs):
        with held_back_stderr():
            return runner(**inputs)

    return run


def _largest_difference(want, got):
    if len(want) == 1 and len(got) == 1:
        pairs = [(next(iter(want.values())), next(iter(got.values())))]
    else:
        pairs = [(value, got[name]) for name, value in want.items()]
    return max(
        float(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64")).max())
        if np.size(a)
        else 0.0
        for a, b in pairs
    )
