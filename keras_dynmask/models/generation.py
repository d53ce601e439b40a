"""Continue a batch of prompts of different lengths, one token at a time.

The prompts are right-padded into one batch. Each row keeps its own
position: its first new token goes right after its own prompt, and the key
and value cache of every block is written at that row's position (the
attention pattern's per-row offset). A row's padding is never seen by its
real tokens, because a causal pattern hides later positions and every
padded slot is overwritten before any query can reach it. So a prompt's
continuation is the same whatever batch it is in, and decoding with the
cache gives the same tokens as running the whole model on the whole text
at every step.

An encoder-decoder (`Seq2Seq`) decodes the same way from its target
prompts (its start id, say), given `sources`: the encoder runs once, and
each decoder block reads its cross-attention keys and values of the source
from a cache made then.

Example:

>>> import keras_dynmask as kd
>>> lm = kd.models.build_causal_lm(50, num_layers=1, hidden_dim=8, num_heads=2)
>>> [len(tokens) for tokens in kd.generation.generate(lm, [[5, 6], [7]], 3)]
[3, 3]
"""

import logging
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_dynmask.core import _random
from keras_dynmask.core._checks import check_int
from keras_dynmask.models import decoding
from keras_dynmask.models.causal_lm import CausalLM
from keras_dynmask.models.seq2seq import Seq2Seq


def generate(
    model,
    prompts,
    max_new_tokens,
    top_k=None,
    top_p=None,
    temperature=1.0,
    seed=0,
    end_id=None,
    use_cache=True,
    return_logits=False,
    compiled=True,
    sources=None,
):
    """New tokens for each prompt: greedy, or sampled (top-k, top-p).

    Args:
        model: a `CausalLM` (from `keras_dynmask.models.build_causal_lm`)
            whose pattern lets no query see a later key, or a `Seq2Seq`
            (from `build_seq2seq`) with `sources`; it decodes through its
            own `call_with_cache`.
        prompts: list of lists of token ids, each non-empty; lengths may
            differ. The padding id is never generated. For a `Seq2Seq`,
            the target prompts (each at least its start id).
        max_new_tokens: int > 0.
        top_k: `None`, or int > 0 to sample among the `top_k` most likely
            tokens.
        top_p: `None`, or float in `(0, 1]` to sample among the most likely
            tokens whose probabilities first reach `top_p` (nucleus
            sampling, applied after `top_k`). With neither, decoding is
            greedy.
        temperature: float > 0. Divides the logits before sampling.
        seed: int in 32 bits. A row's random draws are a function of (seed, its
            prompt, step) only, so a prompt gets the same sample in any
            batch and at any batch position.
        end_id: optional int. A row stops after generating it.
        use_cache: bool. Decode with a key/value cache (each step costs one
            position) or rerun the model on the whole text at every step
            (a reference, step by step).
        return_logits: bool. Also return each step's logits.
        compiled: bool. With the cache, run the whole loop as one compiled
            function (`tf.function` with XLA, `jax.jit`; under PyTorch the
            loop in eager `keras.ops`, each step through `torch.compile`
            when `model.jit_compile` is True, as after
            `model.compile(jit_compile=True)`) or step by step from
            Python. All give the same tokens.
        sources: for a `Seq2Seq` (and only then), a list of source token
            id lists, one per prompt, each non-empty; lengths may differ.
            A row's draws are then a function of its source too.

    Returns:
        A list with each prompt's new tokens (ending at `end_id` if it was
        generated); with `return_logits`, also float32 logits `(B,
        max_new_tokens, vocabulary_size)` (a row's steps after its
        `end_id` are zeros when compiled).
    """
    parts = _parts(model)
    for block in parts.blocks:  # each call: a window may have been widened
        _check_causal(block)
    lengths, ids = pad_prompts(prompts, parts.pad_id)
    source = _sources(model, sources, len(ids))
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    sampling = _sampling(parts, top_k, top_p, temperature)
    if end_id is not None:
        end_id = check_int("end_id", end_id, minimum=0)
    seed = check_int("seed", seed)
    if not -(2**31) <= seed < 2**31:  # JAX without x64 holds 32 bits
        raise ValueError(
            f"seed must fit in 32 bits (from -2**31 to 2**31 - 1), "
            f"received seed={seed}"
        )
    if compiled and use_cache:
        tokens, logits = parts.decode(
            ids,
            lengths,
            max_new_tokens,
            seed,
            sampling,
            end_id,
            return_logits,
            source,
        )
    else:
        keys = None
        if sampling is not None:
            keys = decoding.prompt_keys(
                seed, ids, lengths, source, parts.pad_id or 0
            )
        decoder = _CachedDecoder if use_cache else _FullDecoder
        decoder = decoder(parts, ids, lengths, max_new_tokens, source)
        tokens, logits = _step_by_step(
            decoder, parts.pad_id, max_new_tokens, keys, sampling
        )
    continuations = [_until(row, end_id) for row in tokens.tolist()]
    if return_logits:
        return continuations, logits
    return continuations


def _sources(model, sources, count):
    """A seq2seq's right-padded source ids `(B, S)`, checked; `None` for a
    causal LM."""
    if not isinstance(model, Seq2Seq):
        if sources is not None:
            raise ValueError(
                f"sources are for a Seq2Seq (an encoder-decoder); "
                f"{model.name!r} is a {type(model).__name__}, which "
                "continues its prompts alone: received sources"
            )
        return None
    if sources is None:
        raise ValueError(
            f"{model.name!r} is an encoder-decoder (Seq2Seq): pass "
            "sources=, one source token id list per prompt"
        )
    return pad_sources(sources, count, model.pad_id)


def pad_sources(sources, count, pad_id):
    """Right-padded source ids `(B, max length)`, checked as prompts are,
    and one per prompt (`count` of them)."""
    lengths, source_ids = pad_prompts(sources, pad_id, "sources")
    if len(lengths) != count:
        raise ValueError(
            f"sources must hold one source per prompt: received "
            f"{len(lengths)} sources for {count} prompts"
        )
    return source_ids


def _sampling(parts, top_k, top_p, temperature):
    """`(top_k, top_p, temperature)` for `decoding.choose`, or `None` for
    greedy decoding."""
    if top_k is not None:
        top_k = check_int("top_k", top_k, minimum=1)
        if top_k > parts.vocabulary_size:
            raise ValueError(
                f"top_k must be at most the vocabulary size "
                f"{parts.vocabulary_size}, received top_k={top_k}"
            )
    if top_p is not None and not (
        isinstance(top_p, (int, float))
        and not isinstance(top_p, bool)
        and 0 < top_p <= 1
    ):
        raise ValueError(
            f"top_p must be a float in (0, 1], received top_p={top_p!r}"
        )
    if not (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature > 0
    ):
        raise ValueError(
            f"temperature must be > 0, received temperature={temperature!r}"
        )
    if top_k is None and top_p is None:
        return None
    return (top_k or 0, float(1.0 if top_p is None else top_p), temperature)


def _step_by_step(decoder, pad_id, max_new_tokens, keys, sampling):
    """Tokens `(B, max_new_tokens)` and logits, one Python step at a time."""
    top_k, top_p, temperature = sampling or (1, 1.0, 1.0)
    tokens = np.zeros((len(decoder.lengths), max_new_tokens), "int32")
    all_logits = []
    logits = decoder.first()
    for step in range(max_new_tokens):
        logits = np.asarray(ops.convert_to_numpy(logits), "float32")
        all_logits.append(logits)
        tokens[:, step] = ops.convert_to_numpy(
            decoding.choose(
                logits, pad_id, keys, step, top_k, top_p, float(temperature)
            )
        )
        if step + 1 < max_new_tokens:
            logits = decoder.next(tokens[:, step], step)
    return tokens, np.stack(all_logits, axis=1)


_PARTS = weakref.WeakKeyDictionary()


def _parts(model):
    """The model's `_Parts`, made once per model so that its compiled
    functions are traced once."""
    if not isinstance(model, (CausalLM, Seq2Seq)):
        raise ValueError(
            "generate needs a CausalLM (from build_causal_lm) or a Seq2Seq "
            "(from build_seq2seq), which can run with a key/value cache; "
            f"received {type(model).__name__} {model.name!r}"
        )
    if model not in _PARTS:
        _PARTS[model] = _Parts(model)
    return _PARTS[model]


class _Parts:
    """The compiled functions that decoding calls: the whole loop, or one
    step at a time through the model's own `call_with_cache`, or the whole
    model."""

    def __init__(self, model):
        self.model = model
        if isinstance(model, Seq2Seq):
            self.blocks = model.decoder_blocks
        else:
            self.blocks = model.transformer_blocks
        self.pad_id = model.pad_id
        self.vocabulary_size = model.vocabulary_size
        self.prefill = _compiled(self._prefill)
        self.step = _compiled(self._step)
        self.run = _compiled(self._run)
        self.loop = _compiled_loop(model)

    def decode(
        self, ids, lengths, max_new, seed, sampling, end_id, logits, source
    ):
        """Tokens `(B, max_new)` and logits (or `None`): the whole loop in
        one compiled call. The prompts (and sources) and the new tokens are
        padded to sizes in powers of two, so that a compiler that
        specializes on shapes compiles once per size class, not once per
        call."""
        top_k, top_p, temperature = sampling or (1, 1.0, 1.0)
        settings = {
            "seed": ops.convert_to_tensor(seed, _random.key_dtype()),
            "top_p": ops.convert_to_tensor(top_p, "float32"),
            "temperature": ops.convert_to_tensor(temperature, "float32"),
            "end_id": ops.convert_to_tensor(
                -1 if end_id is None else end_id, "int32"
            ),
        }
        if source is not None:
            settings["source_ids"] = ops.convert_to_tensor(self._padded(source))
        out = self.loop(
            ops.convert_to_tensor(self._padded(ids)),
            ops.convert_to_tensor(lengths),
            ops.convert_to_tensor(max_new, "int32"),
            settings,
            top_k=top_k,
            width=_size_class(max_new),
            sample=sampling is not None,
            keep_logits=logits,
        )
        tokens = ops.convert_to_numpy(out["tokens"])[:, :max_new]
        if not logits:
            return tokens, None
        return tokens, ops.convert_to_numpy(out["logits"])[:, :max_new]

    def _padded(self, ids):
        """`ids` `(B, T)` right-padded to the size class of `T`."""
        length = _size_class(ids.shape[1])
        padded = np.full((len(ids), length), self.pad_id or 0, "int32")
        padded[:, : ids.shape[1]] = ids
        return padded

    def _prefill(self, ids, last, cache):
        """Logits `(B, V)` after position `last` of each row, and the
        cache with every prompt position written."""
        logits, cache = self.model.call_with_cache(ids, cache, 0)
        return decoding.at(logits, last), cache

    def _step(self, tokens, positions, cache):
        """One new token per row, at each row's own position."""
        logits, cache = self.model.call_with_cache(
            ops.expand_dims(tokens, 1), cache, positions
        )
        return logits[:, 0], cache

    def _run(self, ids, last, source=None):
        """The whole model on the whole text: logits after `last`."""
        if source is not None:
            ids = {"source_ids": source, "target_ids": ids}
        return decoding.at(self.model(ids, training=False), last)


def _size_class(size):
    """The power of two at least `size` (and 16)."""
    return max(16, 1 << (int(size) - 1).bit_length())


def _compiled_loop(model):
    """`decoding.decode` for `model` as one compiled function of
    `(ids, lengths, max_new, settings, **static)`: `settings` holds the
    `seed`, `top_p`, `temperature` and `end_id` tensors, and the keywords
    `top_k`, `width`, `sample` and `keep_logits` are Python values (one
    compilation each)."""

    def loop(ids, lengths, max_new, settings, top_k, step=None, **static):
        return decoding.decode(
            model,
            ids,
            lengths,
            max_new,
            top_k=top_k,
            step=step,
            **settings,
            **static,
        )

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        traced = {}
        _quiet_retracing_warning(tf)

        def run(*arguments, **static):
            # One function per set of static values, each traced once for
            # any shape (XLA still compiles once per shape).
            key = tuple(sorted(static.items()))
            if key not in traced:

                def generation_loop(*arguments):
                    return loop(*arguments, **static)

                # XLA: one fused program; about half the time per step of
                # the plain graph on a CPU (measured in benchmarks/).
                traced[key] = tf.function(
                    generation_loop, reduce_retracing=True, jit_compile=True
                )
            return traced[key](*arguments)

        return run
    if backend == "jax":
        import jax

        variables = model.variables

        # The weights are arguments, not constants closed over: XLA would
        # otherwise fold them into the program (slowly, on a GPU).
        def stateless(values, *arguments, **static):
            mapping = list(zip(variables, values, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                return loop(*arguments, **static)

        jitted = jax.jit(
            stateless,
            static_argnames=("top_k", "width", "sample", "keep_logits"),
        )

        def run(*arguments, **static):
            values = [variable.value for variable in variables]
            return jitted(values, *arguments, **static)

        return run

    compiled_step = []

    def run(*arguments, **static):
        # PyTorch: the loop runs eagerly; each step through torch.compile
        # when the model asks for it, as Keras' torch trainer does
        # (`model.compile(jit_compile=True)`; "auto" is eager on PyTorch).
        # A compilation costs ~30 s per shape class at the builder's
        # default size, for steps ~1.9x faster (benchmarks/README.md).
        import torch

        step = None
        if model.jit_compile:
            if not compiled_step:
                compiled_step.append(_torch_compiled_step(model))
            step = compiled_step[0]
        with torch.no_grad():  # no autograd graph to keep
            return loop(*arguments, step=step, **static)

    return run


def _torch_compiled_step(model):
    """`model.call_with_cache` through `torch.compile`, compiled at its
    first call (`dynamic=True`; still, a new size class of prompts and new
    tokens compiled again when measured). Where the compiler cannot run
    (Inductor needs a C++ compiler), a warning says so and the steps run
    eagerly, with the same tokens."""
    import torch

    compiled = torch.compile(model.call_with_cache, dynamic=True)
    state = {"eager": False}

    def step(*arguments):
        if not state["eager"]:
            try:
                return compiled(*arguments)
            except torch._dynamo.exc.TorchDynamoException as error:
                state["eager"] = True
                warnings.warn(
                    "torch.compile could not compile the decoding step, "
                    f"which runs eagerly instead: {error}",
                    stacklevel=2,
                )
        return model.call_with_cache(*arguments)

    return step


class _NotOurRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about
    the generation loop: it counts traces by code object, so the one
    function per static setting (top-k, width, ...) that `_compiled_loop`
    makes by design reads as one function retraced."""

    def filter(self, record):
        message = record.getMessage()
        return not ("generation_loop" in message and "retracing" in message)


def _quiet_retracing_warning(tf):
    logger = tf.get_logger()
    if not any(isinstance(f, _NotOurRetracing) for f in logger.filters):
        logger.addFilter(_NotOurRetracing())


def _check_causal(block):
    pattern = block.pattern
    if pattern.required_inputs():
        raise ValueError(
            f"generate needs self-attention blocks whose pattern reads only "
            f"positions; block {block.name!r} has pattern {str(pattern)!r}"
        )
    values = {
        name: int(ops.convert_to_numpy(variable))
        for name, variable in block.pattern_variables.items()
    }
    if not pattern.hides_future(values):
        raise ValueError(
            "generate decodes left to right, so no query may see a later "
            f"key at any length; block {block.name!r} has pattern "
            f"{str(pattern)!r}, which may show one (combine it with "
            "'causal')"
        )


def pad_prompts(prompts, pad_id, name="prompts"):
    """Lengths `(B,)` and right-padded ids `(B, max length)` of a list of
    prompts (checked: non-empty, without the padding id); `name` names the
    argument in errors."""
    if isinstance(prompts, np.ndarray) or not isinstance(
        prompts, (list, tuple)
    ):
        raise ValueError(
            f"{name} must be a list of token id lists, received "
            f"{type(prompts).__name__}"
        )
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError(
            f"{name} must be non-empty lists of token ids, received "
            f"lengths {[len(prompt) for prompt in prompts]}"
        )
    lengths = np.array([len(prompt) for prompt in prompts], "int32")
    ids = np.full((len(prompts), lengths.max()), pad_id or 0, "int32")
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        if pad_id is not None and pad_id in list(prompt):
            raise ValueError(
                f"{name} must not contain the padding id {pad_id}: "
                f"{name}[{row}] is {list(prompt)}"
            )
    return lengths, ids


def _until(row, end_id):
    if end_id is not None and end_id in row:
        return row[: row.index(end_id) + 1]
    return row


def _compiled(function):
    """`function` traced once per shape under TensorFlow, eager elsewhere."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    return function


class _CachedDecoder:
    """Prefill the prompts once, then one position per step."""

    def __init__(self, parts, ids, lengths, max_new_tokens, source):
        self.parts = parts
        self.ids = ids
        self.lengths = lengths
        positions = ids.shape[1] + max_new_tokens
        if source is None:
            self.cache = parts.model.init_cache(len(ids), positions)
        else:
            self.cache = parts.model.init_cache(source, positions)

    def first(self):
        logits, self.cache = self.parts.prefill(
            ops.convert_to_tensor(self.ids),
            ops.convert_to_tensor(self.lengths - 1),
            self.cache,
        )
        return logits

    def next(self, tokens, step):
        logits, self.cache = self.parts.step(
            ops.convert_to_tensor(tokens),
            ops.convert_to_tensor(self.lengths + step),
            self.cache,
        )
        return logits


class _FullDecoder:
    """The reference: the whole model on the whole text at every step."""

    def __init__(self, parts, ids, lengths, max_new_tokens, source):
        self.parts = parts
        self.lengths = lengths
        self.source = source
        width = ids.shape[1] + max_new_tokens
        self.text = np.full((len(ids), width), parts.pad_id or 0, "int32")
        self.text[:, : ids.shape[1]] = ids

    def _logits(self, ends):
        return self.parts.run(
            ops.convert_to_tensor(self.text[:, : int(ends.max())]),
            ops.convert_to_tensor(ends - 1),
            None if self.source is None else ops.convert_to_tensor(self.source),
        )

    def first(self):
        return self._logits(self.lengths)

    def next(self, tokens, step):
        rows = np.arange(len(tokens))
        self.text[rows, self.lengths + step] = tokens
        return self._logits(self.lengths + step + 1)
