"""Generation on a phone: a causal LM's TFLite signatures `prefill` and
`decode`, and the loop an app runs over them.

On-device runtimes keep the key/value cache outside the model: `prefill`
takes the prompts and returns the logits after each one and the cache,
`decode` takes one token per row, its position and the cache, and returns
the logits and the updated cache. The cache is one input and output per
block, `cache_I` `(B, 2, max_length, num_heads, key_dim)` (keys then
values; no tensor of more than five dimensions, which TFLite's builtins
take), fixed at `max_length` positions when exported; the prompt length
and the batch size are free. `TFLiteGenerator` is that loop in numpy:
port it to the app's language.

Example:

>>> import pathlib, tempfile, keras_dynmask as kd
>>> from keras_dynmask.tf import export
>>> lm = kd.models.build_causal_lm(50, num_layers=1, hidden_dim=8, num_heads=2)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "lm.tflite"
>>> path = export.to_tflite(lm, path, max_length=16)
>>> generator = export.TFLiteGenerator(path)
>>> generator.generate([[5, 6], [7]], 3) == kd.generation.generate(
...     lm, [[5, 6], [7]], 3)
True
"""

import numpy as np
import tensorflow as tf

from keras_dynmask.core._checks import check_int
from keras_dynmask.models import decoding
from keras_dynmask.models import generation
from keras_dynmask.tf.quiet import held_back_stderr


def tflite_signatures(model, max_length):
    """What a causal LM's TFLite file is converted from: a `tf.Module`
    holding the weights, to save, and the signatures `serving_default`
    (logits of whole sequences), `prefill` and `decode`.

    The functions are not attributes of the module: the converter, given
    several signature keys, then converts only one of them.

    Args:
        model: a `CausalLM`.
        max_length: int. Positions of the cache (prompt and new tokens).

    Returns:
        `(module, {signature name: tf.function})`.
    """
    module = tf.Module(name="tflite_generation")
    module.weights = [variable.value for variable in model.variables]
    attention = model.transformer_blocks[0].self_attention
    names = [f"cache_{i}" for i in range(len(model.transformer_blocks))]
    shape = (None, 2, max_length, attention.num_heads, attention.key_dim)
    caches = {name: tf.TensorSpec(shape, tf.float32, name) for name in names}
    ids = tf.TensorSpec((None, None), tf.int32, name="token_ids")
    lengths = tf.TensorSpec((None,), tf.int32, name="lengths")
    token = tf.TensorSpec((None,), tf.int32, name="token_ids")
    positions = tf.TensorSpec((None,), tf.int32, name="positions")

    def serve(inputs):
        return {"outputs": model(inputs["token_ids"], training=False)}

    def prefill(inputs):
        token_ids = inputs["token_ids"]
        batch = tf.shape(token_ids)[0]
        empty = [tf.zeros((batch, *shape[1:]), tf.float32) for _ in names]
        logits, updated = model.call_with_cache(token_ids, empty, 0)
        logits = decoding.at(logits, inputs["lengths"] - 1)
        return {"logits": logits, **dict(zip(names, updated, strict=True))}

    def decode(inputs):
        logits, updated = model.call_with_cache(
            inputs["token_ids"][:, None],
            [inputs[name] for name in names],
            inputs["positions"],
        )
        return {
            "logits": logits[:, 0],
            **dict(zip(names, updated, strict=True)),
        }

    return module, {
        "serving_default": tf.function(
            serve, input_signature=[{"token_ids": ids}]
        ),
        "prefill": tf.function(
            prefill, input_signature=[{"token_ids": ids, "lengths": lengths}]
        ),
        "decode": tf.function(
            decode,
            input_signature=[
                {"token_ids": token, "positions": positions, **caches}
            ],
        ),
    }


def calibration_for_generation(model, batches, max_length):
    """int8 calibration for the three signatures: each batch of ids from
    `batches` (a generator function of `{"token_ids": ids}`) as a whole
    sequence, as prompts for `prefill`, and its last real token through
    `decode` with the cache Keras computes for the rest.

    Returns:
        A generator function of `(signature name, inputs)`, as the
        converter takes for a file of several signatures.
    """
    attention = model.transformer_blocks[0].self_attention
    shape = (2, max_length, attention.num_heads, attention.key_dim)
    names = [f"cache_{i}" for i in range(len(model.transformer_blocks))]

    def generate():
        for batch in batches():
            ids = np.asarray(batch["token_ids"], "int32")[:, :max_length]
            lengths = (ids != (model.pad_id or 0)).sum(axis=1).astype("int32")
            lengths = np.maximum(lengths, 2)
            yield "serving_default", {"token_ids": ids}
            yield "prefill", {"token_ids": ids, "lengths": lengths}
            empty = [np.zeros((len(ids), *shape), "float32") for _ in names]
            before = np.where(
                np.arange(ids.shape[1]) < (lengths - 1)[:, None], ids, 0
            )
            _, caches = model.call_with_cache(before, empty, 0)
            last = ids[np.arange(len(ids)), lengths - 1]
            yield (
                "decode",
                {
                    "token_ids": last,
                    "positions": lengths - 1,
                    **{
                        n: np.asarray(c)
                        for n, c in zip(names, caches, strict=True)
                    },
                },
            )

    return generate


class TFLiteGenerator:
    """Generation over a causal LM's TFLite file, in numpy: what an app
    runs (prefill once, then one `decode` per new token).

    Greedy decoding gives the same tokens as `generation.generate`;
    sampling (top-k, top-p, temperature) draws with numpy's generator from
    `seed`, so it is reproducible but not Keras' draws.

    Args:
        path: a `.tflite` file from `export.to_tflite` of a `CausalLM`.
        pad_id: int. The model's padding id (never generated). Defaults to
            `0`.
    """

    def __init__(self, path, pad_id=0):
        from ai_edge_litert.interpreter import Interpreter

        with held_back_stderr():
            interpreter = Interpreter(model_path=str(path))
            signatures = interpreter.get_signature_list()
            if not {"prefill", "decode"} <= set(signatures):
                raise ValueError(
                    f"{str(path)!r} has no prefill and decode signatures "
                    f"(it has {sorted(signatures)}): export a CausalLM"
                )
            self._prefill = interpreter.get_signature_runner("prefill")
            self._decode = interpreter.get_signature_runner("decode")
        inputs = self._decode.get_input_details()
        self.cache_names = sorted(
            (name for name in inputs if name.startswith("cache_")),
            key=lambda name: int(name.split("_")[1]),
        )
        self.max_length = int(inputs["cache_0"]["shape_signature"][2])
        self.pad_id = pad_id

    def prefill(self, token_ids, lengths):
        """Logits `(B, V)` after each prompt, and the caches (a dict)."""
        with held_back_stderr():
            out = self._prefill(
                token_ids=np.asarray(token_ids, "int32"),
                lengths=np.asarray(lengths, "int32"),
            )
        return out.pop("logits"), out

    def decode(self, tokens, positions, caches):
        """Logits `(B, V)` of one token per row at `positions`, and the
        updated caches."""
        with held_back_stderr():
            out = self._decode(
                token_ids=np.asarray(tokens, "int32"),
                positions=np.asarray(positions, "int32"),
                **caches,
            )
        return out.pop("logits"), out

    def generate(
        self,
        prompts,
        max_new_tokens,
        top_k=None,
        top_p=None,
        temperature=1.0,
        seed=0,
        end_id=None,
    ):
        """New tokens for each prompt, as `generation.generate`.

        Raises:
            ValueError: for a prompt and its new tokens longer than the
                file's `max_length` (nothing is cut), or bad settings.
        """
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        lengths, ids = generation.pad_prompts(prompts, self.pad_id)
        longest = int(lengths.max())
        if longest + max_new_tokens > self.max_length:
            raise ValueError(
                f"This TFLite file holds max_length={self.max_length} "
                f"positions; the longest prompt ({longest} tokens) and "
                f"max_new_tokens={max_new_tokens} need "
                f"{longest + max_new_tokens}"
            )
        if top_k is not None:
            check_int("top_k", top_k, minimum=1)
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(
                f"top_p must be a float in (0, 1], received top_p={top_p!r}"
            )
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, received temperature={temperature!r}"
            )
        rng = np.random.default_rng(check_int("seed", seed))
        choose = _chooser(self.pad_id, top_k, top_p, temperature, rng)
        logits, caches = self.prefill(ids, lengths)
        tokens = np.zeros((len(ids), max_new_tokens), "int32")
        done = np.zeros(len(ids), bool)
        for step in range(max_new_tokens):
            tokens[:, step] = np.where(done, self.pad_id, choose(logits))
            if end_id is not None:
                done |= tokens[:, step] == end_id
            if done.all() or step + 1 == max_new_tokens:
                break
            logits, caches = self.decode(
                tokens[:, step], lengths + step, caches
            )
        rows = tokens.tolist()
        if end_id is None:
            return rows
        return [
            row[: row.index(end_id) + 1] if end_id in row else row
            for row in rows
        ]


def _chooser(pad_id, top_k, top_p, temperature, rng):
    """`choose(logits (B, V)) -> tokens (B,)`: greedy without `top_k` and
    `top_p`, else a draw from the kept tokens' softmax."""

    def choose(logits):
        logits = np.array(logits, "float64")
        logits[:, pad_id] = -np.inf
        if top_k is None and top_p is None:
            return logits.argmax(axis=-1)
        order = np.argsort(-logits, axis=-1, kind="stable")
        ordered = np.take_along_axis(logits, order, axis=-1) / temperature
        keep = np.isfinite(ordered)
        if top_k is not None:
            keep[:, top_k:] = False
        weights = np.where(keep, np.exp(ordered - ordered[:, :1]), 0.0)
        weights /= weights.sum(axis=-1, keepdims=True)
        if top_p is not None:
            before = np.cumsum(weights, axis=-1) - weights
            keep &= before < top_p
            keep[:, 0] = True
            weights = np.where(keep, weights, 0.0)
            weights /= weights.sum(axis=-1, keepdims=True)
        picks = [rng.choice(len(w), p=w) for w in weights]
        return order[np.arange(len(order)), picks]

    return choose
