"""Generation on a phone: a causal LM's or an encoder-decoder's TFLite
signatures `prefill` and `decode`, and the loop an app runs over them.

On-device runtimes keep the key/value cache outside the model: `prefill`
takes the prompts and returns the logits after each one and the cache,
`decode` takes one token per row, its position and the cache, and returns
the logits and the updated cache. The cache is one input and output per
block, `cache_I` `(B, 2, max_length, num_heads, key_dim)` (keys then
values; no tensor of more than five dimensions, which TFLite's builtins
take), fixed at `max_length` positions when exported; the prompt length
and the batch size are free.

An encoder-decoder's `prefill` also takes `source_ids` `(B, S)` (any `S`),
runs the encoder once and returns each decoder block's cross-attention
keys and values `cross_I` `(B, 2, S, num_heads, key_dim)`; its `decode`
takes them back with `source_ids` (for the source padding) at every step.

`TFLiteGenerator` is that loop in numpy: port it to the app's language.

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
from keras_dynmask.models.seq2seq import Seq2Seq
from keras_dynmask.tf.quiet import held_back_stderr


class _Layout:
    """The names and shapes of a model's cache inputs and outputs, and the
    cache `call_with_cache` takes, made from them."""

    def __init__(self, model, max_length):
        self.model = model
        self.seq2seq = isinstance(model, Seq2Seq)
        blocks = (
            model.decoder_blocks if self.seq2seq else model.transformer_blocks
        )
        attention = blocks[0].self_attention
        self.heads = (attention.num_heads, attention.key_dim)
        self.max_length = max_length
        self.caches = [f"cache_{i}" for i in range(len(blocks))]
        self.crosses = (
            [f"cross_{i}" for i in range(len(blocks))] if self.seq2seq else []
        )

    def specs(self):
        """`{name: tf.TensorSpec}` of the caches `decode` takes."""
        shape = (None, 2, self.max_length, *self.heads)
        specs = {n: tf.TensorSpec(shape, tf.float32, n) for n in self.caches}
        cross = (None, 2, None, *self.heads)
        for name in self.crosses:
            specs[name] = tf.TensorSpec(cross, tf.float32, name)
        if self.seq2seq:
            specs["source_ids"] = _ids_spec("source_ids")
        return specs

    def start(self, batch, source_ids=None):
        """The empty cache of `batch` rows (the encoder's keys and values
        of `source_ids` for a seq2seq), in `call_with_cache`'s form."""
        if self.seq2seq:
            return self.model.init_cache(
                source_ids, self.max_length, per_block=True
            )
        return self.model.init_cache(batch, self.max_length, per_block=True)

    def cache(self, inputs):
        """The cache in `call_with_cache`'s form, from named inputs."""
        caches = [inputs[name] for name in self.caches]
        if not self.seq2seq:
            return caches
        return {
            "self": caches,
            "cross": [inputs[name] for name in self.crosses],
            "source_mask": self.model.source_mask(inputs["source_ids"]),
        }

    def named(self, cache, crosses=True):
        """`{name: tensor}` of a cache in `call_with_cache`'s form: the
        self-attention caches, and with `crosses` the cross-attention
        ones."""
        if not self.seq2seq:
            return dict(zip(self.caches, cache, strict=True))
        named = dict(zip(self.caches, cache["self"], strict=True))
        if crosses:
            named.update(zip(self.crosses, cache["cross"], strict=True))
        return named


def _ids_spec(name):
    return tf.TensorSpec((None, None), tf.int32, name=name)


def tflite_signatures(model, max_length):
    """What a causal LM's or a seq2seq's TFLite file is converted from: a
    `tf.Module` holding the weights, to save, and the signatures
    `serving_default` (logits of whole sequences), `prefill` and `decode`.

    The functions are not attributes of the module: the converter, given
    several signature keys, then converts only one of them.

    Args:
        model: a `CausalLM` or a `Seq2Seq`.
        max_length: int. Positions of the cache (prompt and new tokens).

    Returns:
        `(module, {signature name: tf.function})`.
    """
    module = tf.Module(name="tflite_generation")
    module.weights = [variable.value for variable in model.variables]
    layout = _Layout(model, max_length)
    ids = _ids_spec("token_ids")
    lengths = tf.TensorSpec((None,), tf.int32, name="lengths")
    token = tf.TensorSpec((None,), tf.int32, name="token_ids")
    positions = tf.TensorSpec((None,), tf.int32, name="positions")
    source = {"source_ids": _ids_spec("source_ids")} if layout.seq2seq else {}

    def serve(inputs):
        if layout.seq2seq:
            inputs = {
                "source_ids": inputs["source_ids"],
                "target_ids": inputs["target_ids"],
            }
            return {"outputs": model(inputs, training=False)}
        return {"outputs": model(inputs["token_ids"], training=False)}

    def prefill(inputs):
        token_ids = inputs["token_ids"]
        cache = layout.start(tf.shape(token_ids)[0], inputs.get("source_ids"))
        logits, cache = model.call_with_cache(token_ids, cache, 0)
        logits = decoding.at(logits, inputs["lengths"] - 1)
        return {"logits": logits, **layout.named(cache)}

    def decode(inputs):
        logits, cache = model.call_with_cache(
            inputs["token_ids"][:, None],
            layout.cache(inputs),
            inputs["positions"],
        )
        return {"logits": logits[:, 0], **layout.named(cache, crosses=False)}

    whole = (
        {
            "source_ids": source["source_ids"],
            "target_ids": _ids_spec("target_ids"),
        }
        if layout.seq2seq
        else {"token_ids": ids}
    )
    return module, {
        "serving_default": tf.function(serve, input_signature=[whole]),
        "prefill": tf.function(
            prefill,
            input_signature=[{**source, "token_ids": ids, "lengths": lengths}],
        ),
        "decode": tf.function(
            decode,
            input_signature=[
                {"token_ids": token, "positions": positions, **layout.specs()}
            ],
        ),
    }


def calibration_for_generation(model, batches, max_length):
    """int8 calibration for the three signatures: each batch of ids from
    `batches` (a generator function of `{"token_ids": ids}`, or of
    `{"source_ids": ..., "target_ids": ...}` for a seq2seq) as a whole
    sequence, as prompts for `prefill`, and its last real token through
    `decode` with the cache Keras computes for the rest.

    Returns:
        A generator function of `(signature name, inputs)`, as the
        converter takes for a file of several signatures.
    """
    layout = _Layout(model, max_length)
    pad_id = model.pad_id or 0

    def generate():
        for batch in batches():
            name = "target_ids" if layout.seq2seq else "token_ids"
            ids = np.asarray(batch[name], "int32")[:, :max_length]
            source = {}
            if layout.seq2seq:
                source = {
                    "source_ids": np.asarray(batch["source_ids"], "int32")
                }
            lengths = (ids != pad_id).sum(axis=1).astype("int32")
            lengths = np.maximum(lengths, 2)
            yield "serving_default", {name: ids, **source}
            yield "prefill", {**source, "token_ids": ids, "lengths": lengths}
            before = np.where(
                np.arange(ids.shape[1]) < (lengths - 1)[:, None], ids, pad_id
            )
            cache = layout.start(len(ids), source.get("source_ids"))
            _, cache = model.call_with_cache(before, cache, 0)
            last = ids[np.arange(len(ids)), lengths - 1]
            named = layout.named(cache)
            yield (
                "decode",
                {
                    "token_ids": last,
                    "positions": lengths - 1,
                    **source,
                    **{n: np.asarray(c) for n, c in named.items()},
                },
            )

    return generate


class TFLiteGenerator:
    """Generation over a causal LM's or a seq2seq's TFLite file, in numpy:
    what an app runs (prefill once, then one `decode` per new token).

    Greedy decoding gives the same tokens as `generation.generate`;
    sampling (top-k, top-p, temperature) draws with numpy's generator from
    `seed`, so it is reproducible but not Keras' draws.

    Args:
        path: a `.tflite` file from `export.to_tflite` of a `CausalLM` or
            a `Seq2Seq`.
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
                    f"(it has {sorted(signatures)}): export a CausalLM or a "
                    "Seq2Seq"
                )
            self._prefill = interpreter.get_signature_runner("prefill")
            self._decode = interpreter.get_signature_runner("decode")
        inputs = self._decode.get_input_details()
        self.max_length = int(inputs["cache_0"]["shape_signature"][2])
        # An encoder-decoder's file: prefill and decode take the sources.
        self.takes_sources = "source_ids" in inputs
        self.pad_id = pad_id

    def prefill(self, token_ids, lengths, source_ids=None):
        """Logits `(B, V)` after each prompt, and the caches (a dict: with
        `source_ids`, the cross-attention ones too)."""
        feed = {"source_ids": source_ids} if self.takes_sources else {}
        with held_back_stderr():
            out = self._prefill(
                token_ids=np.asarray(token_ids, "int32"),
                lengths=np.asarray(lengths, "int32"),
                **{k: np.asarray(v, "int32") for k, v in feed.items()},
            )
        return out.pop("logits"), out

    def decode(self, tokens, positions, caches, source_ids=None):
        """Logits `(B, V)` of one token per row at `positions`, and the
        caches, the self-attention ones updated."""
        with held_back_stderr():
            return self._decode_step(tokens, positions, caches, source_ids)

    def _decode_step(self, tokens, positions, caches, source_ids):
        feed = dict(caches)
        if self.takes_sources:
            feed["source_ids"] = np.asarray(source_ids, "int32")
        out = self._decode(
            token_ids=np.asarray(tokens, "int32"),
            positions=np.asarray(positions, "int32"),
            **feed,
        )
        return out.pop("logits"), {**caches, **out}

    def generate(
        self,
        prompts,
        max_new_tokens,
        top_k=None,
        top_p=None,
        temperature=1.0,
        seed=0,
        end_id=None,
        sources=None,
    ):
        """New tokens for each prompt, as `generation.generate` (`sources`
        for an encoder-decoder's file, and only then).

        Raises:
            ValueError: for a prompt and its new tokens longer than the
                file's `max_length` (nothing is cut), or bad settings.
        """
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        lengths, ids = generation.pad_prompts(prompts, self.pad_id)
        source_ids = self._sources(sources, len(ids))
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
        logits, caches = self.prefill(ids, lengths, source_ids)
        tokens = np.zeros((len(ids), max_new_tokens), "int32")
        done = np.zeros(len(ids), bool)
        # Held back once for the whole loop, not at every step.
        with held_back_stderr():
            for step in range(max_new_tokens):
                tokens[:, step] = np.where(done, self.pad_id, choose(logits))
                if end_id is not None:
                    done |= tokens[:, step] == end_id
                if done.all() or step + 1 == max_new_tokens:
                    break
                logits, caches = self._decode_step(
                    tokens[:, step], lengths + step, caches, source_ids
                )
        rows = tokens.tolist()
        if end_id is None:
            return rows
        return [
            row[: row.index(end_id) + 1] if end_id in row else row
            for row in rows
        ]

    def _sources(self, sources, count):
        """The sources, right-padded, for an encoder-decoder's file."""
        if not self.takes_sources:
            if sources is not None:
                raise ValueError(
                    "sources are for an encoder-decoder's file; this one is "
                    "a causal LM's, which continues its prompts alone"
                )
            return None
        if sources is None:
            raise ValueError(
                "This TFLite file is an encoder-decoder's: pass sources=, "
                "one source token id list per prompt"
            )
        return generation.pad_sources(sources, count, self.pad_id)


def _chooser(pad_id, top_k, top_p, temperature, rng):
    """`choose(logits (B, V)) -> tokens (B,)`: greedy without `top_k` and
    `top_p`, else a draw from the kept tokens' softmax."""

    greedy = top_k is None and top_p is None

    def choose(logits):
        # A copy; float64 for the sampling's softmax.
        logits = np.array(logits, "float32" if greedy else "float64")
        logits[:, pad_id] = -np.inf
        if greedy:
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
