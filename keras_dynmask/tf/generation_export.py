"""Generation where a causal LM or an encoder-decoder is deployed: a
SavedModel for TF Serving with a `generate` signature (token ids in, new
ids out; for a causal LM with a tokenizer, text in and text out).

The signature runs `keras_dynmask.models.decoding.decode`, the loop that
`generation.generate` compiles, so it gives the same tokens. Its sampling
settings are inputs with defaults (the SavedModel's `SignatureDef.defaults`,
and `PlaceholderWithDefault`s in the graph), so a request names only the
prompts; a request in TF Serving's row format (`instances`) can carry
per-row inputs only, and gets the defaults. Bad settings are refused in
the graph with a message naming them (TF Serving answers
`INVALID_ARGUMENT`).

`export.to_saved_model` calls this for a `CausalLM` and a `Seq2Seq`, and
`export.to_text_saved_model` for a `CausalLM`; use those.
"""

import tensorflow as tf

from keras_dynmask.models import decoding
from keras_dynmask.models.seq2seq import Seq2Seq

# The defaults of the `generate` signature's settings; greedy decoding.
DEFAULTS = {
    "max_new_tokens": 32,
    "top_k": 1,
    "top_p": 1.0,
    "temperature": 1.0,
    "seed": 0,
    "end_id": -1,
}
_DTYPES = {
    "max_new_tokens": tf.int32,
    "top_k": tf.int32,
    "top_p": tf.float32,
    "temperature": tf.float32,
    "seed": tf.int64,
    "end_id": tf.int32,
}


class GenerationModule(tf.Module):
    """What the SavedModel of a causal LM or a seq2seq holds: its weights,
    the tokenizer if any, and the signatures `serving_default` (logits, as
    for any model) and `generate`.

    Args:
        model: a `CausalLM`, or a `Seq2Seq` (ids only: its `generate`
            takes `source_ids` and the target prompts `token_ids`).
        tokenizer: a `WordPieceTokenizer` (a `CausalLM` only), or `None`
            for ids in and out.
        defaults: dict overriding `DEFAULTS` (e.g. `end_id`).
    """

    def __init__(self, model, tokenizer=None, defaults=None):
        super().__init__(name="generation")
        if tokenizer is not None and isinstance(model, Seq2Seq):
            raise ValueError(
                "A text generate signature is for a CausalLM; export the "
                f"Seq2Seq {model.name!r} with ids (to_saved_model)"
            )
        self._model = model
        self._tokenizer = tokenizer
        # Tracked, so the SavedModel saves them: the weights the traced
        # functions read, and the tensorflow-text tokenizer's resources.
        self.weights = [variable.value for variable in model.variables]
        if tokenizer is not None:
            self.tokenizer = tokenizer.module
        self.settings = {**DEFAULTS, **(defaults or {})}
        unknown = sorted(set(self.settings) - set(DEFAULTS))
        if unknown:
            raise ValueError(
                f"Unknown generation settings {unknown}; the settings are "
                f"{sorted(DEFAULTS)}"
            )
        # Saved as the module's functions too: `tf.saved_model.load(path)
        # .generate(token_ids)` takes the defaults in Python as well.
        self.serve = self._serving_default()
        self.generate = self._generate()

    def write_out(self, path, verbose=False):
        """Writes the SavedModel to `path` (as `ExportArchive.write_out`,
        whose `verbose` summary it does not print)."""
        del verbose
        signatures = {"serving_default": self.serve, "generate": self.generate}
        tf.saved_model.save(self, str(path), signatures=signatures)

    def _serving_default(self):
        model, tokenizer = self._model, self._tokenizer
        if isinstance(model, Seq2Seq):
            specs = [
                tf.TensorSpec((None, None), tf.int32, name=name)
                for name in ("source_ids", "target_ids")
            ]

            def serve(source_ids, target_ids):
                inputs = {"source_ids": source_ids, "target_ids": target_ids}
                return {"outputs": model(inputs, training=False)}

            return tf.function(serve, input_signature=specs)
        if tokenizer is None:
            spec = tf.TensorSpec((None, None), tf.int32, name="token_ids")

            def serve(token_ids):
                return {"outputs": model(token_ids, training=False)}

        else:
            spec = tf.TensorSpec((None,), tf.string, name="text")

            def serve(text):
                token_ids = tokenizer.encode_tensor(text)
                return {"outputs": model(token_ids, training=False)}

        return tf.function(serve, input_signature=[spec])

    def _generate(self):
        """The `generate` function, its settings keyword inputs with
        defaults (a `tf.function` keeps Python defaults that are tensors
        as the signature's defaults)."""
        model, tokenizer = self._model, self._tokenizer
        defaults = {
            name: tf.constant(value, _DTYPES[name])
            for name, value in self.settings.items()
        }
        specs = [
            tf.TensorSpec((), _DTYPES[name], name=name) for name in DEFAULTS
        ]

        def run(token_ids, settings, source_ids=None):
            lengths = _checked(model, token_ids, settings)
            if source_ids is not None:
                source_ids = _checked_sources(model, source_ids, token_ids)
            out = decoding.decode(
                model,
                token_ids,
                lengths,
                settings["max_new_tokens"],
                seed=settings["seed"],
                top_k=settings["top_k"],
                top_p=settings["top_p"],
                temperature=settings["temperature"],
                end_id=settings["end_id"],
                source_ids=source_ids,
            )
            return {"token_ids": out["tokens"], "lengths": out["lengths"]}

        ids = tf.TensorSpec((None, None), tf.int32, name="token_ids")
        if isinstance(model, Seq2Seq):
            sources = tf.TensorSpec((None, None), tf.int32, name="source_ids")

            def generate(
                source_ids,
                token_ids,
                max_new_tokens=defaults["max_new_tokens"],
                top_k=defaults["top_k"],
                top_p=defaults["top_p"],
                temperature=defaults["temperature"],
                seed=defaults["seed"],
                end_id=defaults["end_id"],
            ):
                settings = dict(locals())
                del settings["source_ids"], settings["token_ids"]
                return run(token_ids, settings, source_ids)

            return tf.function(generate, input_signature=[sources, ids, *specs])
        if tokenizer is None:
            first = ids

            def generate(
                token_ids,
                max_new_tokens=defaults["max_new_tokens"],
                top_k=defaults["top_k"],
                top_p=defaults["top_p"],
                temperature=defaults["temperature"],
                seed=defaults["seed"],
                end_id=defaults["end_id"],
            ):
                settings = dict(locals())
                del settings["token_ids"]
                return run(token_ids, settings)

        else:
            first = tf.TensorSpec((None,), tf.string, name="text")

            def generate(
                text,
                max_new_tokens=defaults["max_new_tokens"],
                top_k=defaults["top_k"],
                top_p=defaults["top_p"],
                temperature=defaults["temperature"],
                seed=defaults["seed"],
                end_id=defaults["end_id"],
            ):
                settings = dict(locals())
                del settings["text"]
                out = run(tokenizer.prompt_tensor(text), settings)
                return {
                    "text": tokenizer.decode_tensor(out["token_ids"]),
                    **out,
                }

        return tf.function(generate, input_signature=[first, *specs])


def _checked(model, token_ids, settings):
    """Each prompt's length, after checks in the graph that name the input
    at fault: prompts right-padded and non-empty, settings in range."""
    lengths, checks = _layout(model, token_ids, "token_ids", "prompt")
    vocabulary = model.vocabulary_size
    checks += [
        tf.debugging.assert_positive(
            settings["max_new_tokens"], message="max_new_tokens must be > 0"
        ),
        tf.debugging.assert_equal(
            tf.logical_and(
                settings["top_k"] >= 0, settings["top_k"] <= vocabulary
            ),
            True,
            message=f"top_k must be from 0 (no limit) to the vocabulary size "
            f"{vocabulary}",
        ),
        tf.debugging.assert_equal(
            tf.logical_and(settings["top_p"] > 0, settings["top_p"] <= 1),
            True,
            message="top_p must be in (0, 1]",
        ),
        tf.debugging.assert_positive(
            settings["temperature"], message="temperature must be > 0"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(lengths)


def _checked_sources(model, source_ids, token_ids):
    """`source_ids`, after checks in the graph: right-padded, non-empty,
    one per prompt."""
    _, checks = _layout(model, source_ids, "source_ids", "source")
    checks.append(
        tf.debugging.assert_equal(
            tf.shape(source_ids)[0],
            tf.shape(token_ids)[0],
            message="source_ids and token_ids must have one row per "
            "example (as many sources as prompts)",
        )
    )
    with tf.control_dependencies(checks):
        return tf.identity(source_ids)


def _layout(model, ids, name, what):
    """Each row's length, and the checks that `ids` `(B, T)` are
    right-padded with no padding inside a row and no empty row."""
    pad_id = model.pad_id or 0
    real = tf.not_equal(ids, pad_id)
    lengths = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)
    width = tf.shape(ids)[1]
    right_padded = tf.equal(real, tf.range(width)[None, :] < lengths[:, None])
    checks = [
        tf.debugging.assert_equal(
            tf.reduce_all(right_padded),
            True,
            message=f"{name} must be right-padded with the padding id "
            f"{pad_id}, with no padding id inside a {what}",
        ),
        tf.debugging.assert_positive(
            lengths, message=f"{name}: every {what} needs a token"
        ),
    ]
    return lengths, checks
