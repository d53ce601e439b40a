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

Example:

>>> import keras_dynmask as kd
>>> lm = kd.models.build_causal_lm(50, num_layers=1, hidden_dim=8, num_heads=2)
>>> [len(tokens) for tokens in kd.generation.generate(lm, [[5, 6], [7]], 3)]
[3, 3]
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_dynmask.core import _random
from keras_dynmask.core._checks import check_int
from keras_dynmask.models.causal_lm import CausalLM


def generate(
    model,
    prompts,
    max_new_tokens,
    top_k=None,
    temperature=1.0,
    seed=0,
    end_id=None,
    use_cache=True,
    return_logits=False,
):
    """New tokens for each prompt, greedy or sampled from the top k.

    Args:
        model: a `CausalLM` (from `keras_dynmask.models.build_causal_lm`)
            whose pattern lets no query see a later key; it decodes through
            its own `call_with_cache`.
        prompts: list of lists of token ids, each non-empty; lengths may
            differ. The padding id is never generated.
        max_new_tokens: int > 0.
        top_k: `None` for greedy decoding, or int > 0 to sample among the
            `top_k` most likely tokens.
        temperature: float > 0. Divides the logits before sampling.
        seed: int. A row's random draws are a function of (seed, its
            prompt, step) only, so a prompt gets the same sample in any
            batch and at any batch position.
        end_id: optional int. A row stops after generating it.
        use_cache: bool. Decode with a key/value cache (each step costs one
            position) or rerun the model on the whole text at every step.
        return_logits: bool. Also return each step's logits.

    Returns:
        A list with each prompt's new tokens (ending at `end_id` if it was
        generated); with `return_logits`, also float32 logits `(B,
        max_new_tokens, vocabulary_size)`.
    """
    parts = _parts(model)
    for block in parts.blocks:  # each call: a window may have been widened
        _check_causal(block)
    lengths, ids = _pad(prompts, parts.pad_id)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    if top_k is not None:
        top_k = check_int("top_k", top_k, minimum=1)
        if top_k > parts.vocabulary_size:
            raise ValueError(
                f"top_k must be at most the vocabulary size "
                f"{parts.vocabulary_size}, received top_k={top_k}"
            )
    if not float(temperature) > 0:
        raise ValueError(
            f"temperature must be > 0, received temperature={temperature!r}"
        )
    if end_id is not None:
        end_id = check_int("end_id", end_id, minimum=0)
    keys = _prompt_keys(seed, ids, lengths)
    decoder = _CachedDecoder if use_cache else _FullDecoder
    decoder = decoder(parts, ids, lengths, max_new_tokens)

    tokens = np.zeros((len(prompts), max_new_tokens), "int32")
    all_logits = []
    logits = decoder.first()
    for step in range(max_new_tokens):
        logits = np.asarray(ops.convert_to_numpy(logits), "float32")
        all_logits.append(logits)
        tokens[:, step] = _choose(
            logits, parts.pad_id, top_k, temperature, keys, step
        )
        if step + 1 < max_new_tokens:
            logits = decoder.next(tokens[:, step], step)

    continuations = [_until(row, end_id) for row in tokens.tolist()]
    if return_logits:
        return continuations, np.stack(all_logits, axis=1)
    return continuations


_PARTS = weakref.WeakKeyDictionary()


def _parts(model):
    """The model's `_Parts`, made once per model so that its compiled
    functions are traced once."""
    if not isinstance(model, CausalLM):
        raise ValueError(
            "generate needs a CausalLM (from build_causal_lm or "
            "keras_dynmask.models.CausalLM), which can run with a key/value "
            f"cache; received {type(model).__name__} {model.name!r}"
        )
    if model not in _PARTS:
        _PARTS[model] = _Parts(model)
    return _PARTS[model]


class _Parts:
    """The compiled functions that decoding calls: through the model's own
    `call_with_cache`, or the whole model."""

    def __init__(self, model):
        self.model = model
        self.blocks = model.transformer_blocks
        self.pad_id = model.pad_id
        self.vocabulary_size = model.vocabulary_size
        self.prefill = _compiled(self._prefill)
        self.step = _compiled(self._step)
        self.run = _compiled(self._run)

    def _prefill(self, ids, last, cache):
        """Logits `(B, V)` after position `last` of each row, and the
        cache with every prompt position written."""
        logits, cache = self.model.call_with_cache(ids, cache, 0)
        return _at(logits, last)[:, 0], cache

    def _step(self, tokens, positions, cache):
        """One new token per row, at each row's own position."""
        logits, cache = self.model.call_with_cache(
            ops.expand_dims(tokens, 1), cache, positions
        )
        return logits[:, 0], cache

    def _run(self, ids, last):
        """The whole model on the whole text: logits after `last`."""
        logits = self.model(ids, training=False)
        return _at(logits, last)[:, 0]


def _at(x, positions):
    """`x[b, positions[b]]` as `(B, 1, D)`, exact (a one-hot product)."""
    one_hot = ops.one_hot(positions, ops.shape(x)[1], dtype=x.dtype)
    return ops.einsum("bt,btd->bd", one_hot, x)[:, None, :]


def _check_causal(block):
    pattern = block.pattern
    if block.cross_attention or pattern.required_inputs():
        raise ValueError(
            f"generate needs self-attention blocks whose pattern reads only "
            f"positions; block {block.name!r} has pattern {str(pattern)!r}"
            + (" and cross-attention" if block.cross_attention else "")
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


def _pad(prompts, pad_id):
    """Lengths `(B,)` and right-padded ids `(B, max length)`."""
    if isinstance(prompts, np.ndarray) or not isinstance(
        prompts, (list, tuple)
    ):
        raise ValueError(
            "prompts must be a list of token id lists, received "
            f"{type(prompts).__name__}"
        )
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError(
            f"prompts must be non-empty lists of token ids, received "
            f"lengths {[len(prompt) for prompt in prompts]}"
        )
    lengths = np.array([len(prompt) for prompt in prompts], "int32")
    ids = np.full((len(prompts), lengths.max()), pad_id or 0, "int32")
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        if pad_id is not None and pad_id in list(prompt):
            raise ValueError(
                f"prompts must not contain the padding id {pad_id}: prompt "
                f"{row} is {list(prompt)}"
            )
    return lengths, ids


def _prompt_keys(seed, ids, lengths):
    """Random keys `(B,)`: a function of the seed and each row's prompt."""
    keys = _random.combine(ops.zeros((len(ids),), _random.key_dtype()), seed)
    keys = _random.combine(keys, lengths)
    for position in range(ids.shape[1]):
        folded = _random.combine(keys, ids[:, position])
        keys = ops.where(position < lengths, folded, keys)
    return keys


def _choose(logits, pad_id, top_k, temperature, keys, step):
    """The next token of each row from its logits `(B, V)`."""
    logits = logits.copy()
    if pad_id is not None:
        logits[:, pad_id] = -np.inf
    if top_k is None:
        return logits.argmax(axis=-1)
    kth = -np.sort(-logits, axis=-1)[:, top_k - 1 : top_k]
    logits = np.where(logits >= kth, logits / float(temperature), -np.inf)
    # Gumbel-max: argmax(logits + Gumbel noise) samples softmax(logits).
    draws = _random.uniform(_random.combine(keys, step), logits.shape[1])
    draws = np.clip(ops.convert_to_numpy(draws), 2.0**-25, 1 - 2.0**-25)
    return (logits - np.log(-np.log(draws))).argmax(axis=-1)


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

    def __init__(self, parts, ids, lengths, max_new_tokens):
        self.parts = parts
        self.ids = ids
        self.lengths = lengths
        self.cache = parts.model.init_cache(
            len(ids), ids.shape[1] + max_new_tokens
        )

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

    def __init__(self, parts, ids, lengths, max_new_tokens):
        self.parts = parts
        self.lengths = lengths
        width = ids.shape[1] + max_new_tokens
        self.text = np.full((len(ids), width), parts.pad_id or 0, "int32")
        self.text[:, : ids.shape[1]] = ids

    def _logits(self, ends):
        return self.parts.run(
            ops.convert_to_tensor(self.text[:, : int(ends.max())]),
            ops.convert_to_tensor(ends - 1),
        )

    def first(self):
        return self._logits(self.lengths)

    def next(self, tokens, step):
        rows = np.arange(len(tokens))
        self.text[rows, self.lengths + step] = tokens
        return self._logits(self.lengths + step + 1)
