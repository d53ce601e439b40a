"""The whole generation loop as one graph: prefill, then decode and sample.

`decode` is written in `keras.ops` with `ops.while_loop`, so one function
holds every step: `tf.function` compiles it (and `export` writes it into a
SavedModel's `generate` signature), `jax.jit` compiles it, and under
PyTorch it runs eagerly. It gives the same tokens as the step-by-step loop
of `keras_dynmask.generation` (which calls the same `choose` and
`prompt_keys` between steps), because every row's random draws are a
function of (seed, its prompt, step) only.

Example:

>>> import numpy as np, keras_dynmask as kd
>>> from keras_dynmask.models import decoding
>>> lm = kd.models.build_causal_lm(50, num_layers=1, hidden_dim=8, num_heads=2)
>>> ids, lengths = np.array([[5, 6], [7, 0]]), np.array([2, 1])
>>> out = decoding.decode(lm, ids, lengths, 3)
>>> tuple(out["tokens"].shape), [int(n) for n in out["lengths"]]
((2, 3), [3, 3])
"""

from keras import ops

from keras_dynmask.core import _random

# Uniform draws are clipped away from 0 and 1 before the Gumbel transform,
# so that `-log(-log(u))` is finite.
_TINY = 2.0**-25


def decode(
    model,
    ids,
    lengths,
    max_new_tokens,
    seed=0,
    top_k=1,
    top_p=1.0,
    temperature=1.0,
    end_id=-1,
    sample=True,
    keep_logits=False,
    width=None,
    source_ids=None,
    step=None,
):
    """New tokens for right-padded prompts, every step in one graph.

    Args:
        model: a `CausalLM`, or a `Seq2Seq` with `source_ids`.
        ids: int `(B, T)` prompts, right-padded (a seq2seq's target
            prompts: its start id, or more).
        lengths: int `(B,)` each prompt's length (at least 1).
        max_new_tokens: int, or a scalar int tensor (TensorFlow).
        seed: int or scalar int tensor. Each row's draws are a function of
            (seed, its prompt, step): see `prompt_keys`.
        top_k: int or scalar int tensor. Sample among the `top_k` most
            likely tokens; `0` for no limit; `1` is greedy.
        top_p: float or scalar float tensor. Sample among the most likely
            tokens whose probabilities first reach `top_p` (nucleus); `1.0`
            for no limit.
        temperature: float or scalar float tensor > 0.
        end_id: int or scalar int tensor. A row stops after generating it;
            `-1` for none.
        sample: Python bool. `False` always takes the argmax (and sorts
            nothing).
        keep_logits: Python bool. Also return each step's logits.
        width: int, at least `max_new_tokens`: the columns of the outputs
            and the cache's positions past the prompt. A fixed width lets a
            compiler that specializes on shapes (XLA) compile once for
            every count up to it. Defaults to `max_new_tokens`.
        source_ids: int `(B, S)` a seq2seq's sources, right-padded; the
            encoder runs on them once.
        step: what runs the model on one token per row, with the
            arguments and result of `model.call_with_cache` (which it is by
            default): the PyTorch loop passes it compiled.

    Returns:
        `{"tokens": int32 (B, width), "lengths": int32 (B,)}`:
        each row's new tokens, up to and including `end_id`, then the
        padding id; `lengths` counts them. With `keep_logits`, also
        `"logits"` float32 `(B, width, vocabulary_size)` (zeros
        after a row's end). The loop ends early once every row has ended.
    """
    ids = ops.convert_to_tensor(ids, "int32")
    lengths = ops.convert_to_tensor(lengths, "int32")
    end_id = ops.convert_to_tensor(end_id, "int32")
    pad_id = model.pad_id or 0
    batch = ops.shape(ids)[0]
    width = max_new_tokens if width is None else width
    positions = ops.shape(ids)[1] + width
    keys = None
    if source_ids is None:
        cache = model.init_cache(batch, positions)
        if sample:
            keys = prompt_keys(seed, ids, lengths)
    else:
        source_ids = ops.convert_to_tensor(source_ids, "int32")
        cache = model.init_cache(source_ids, positions)
        if sample:
            keys = prompt_keys(seed, ids, lengths, source_ids, pad_id)
    logits, cache = model.call_with_cache(ids, cache, 0)
    logits = at(logits, lengths - 1)

    def choose_at(logits, step):
        return choose(
            logits,
            pad_id,
            keys,
            step,
            top_k,
            top_p,
            temperature,
        )

    columns = ops.arange(width, dtype="int32")
    token = choose_at(logits, 0)
    tokens = _written(ops.zeros((batch, width), "int32"), token, 0)
    done = ops.equal(token, end_id)
    # Each step's logits, when asked for (else an empty stand-in: the
    # loop's state has a fixed structure).
    kept = ops.zeros((batch, 0), "float32")
    if keep_logits:
        kept = ops.zeros((batch, width, model.vocabulary_size), "float32")
        kept = _written(kept, ops.cast(logits, "float32"), 0)

    def going(step, token, tokens, cache, done, kept):
        return ops.logical_and(
            step < max_new_tokens, ops.logical_not(ops.all(done))
        )

    call = model.call_with_cache if step is None else step

    def one_step(step, token, tokens, cache, done, kept):
        logits, cache = call(
            ops.expand_dims(token, 1), cache, lengths + step - 1
        )
        logits = logits[:, 0]
        token = ops.where(done, pad_id, choose_at(logits, step))
        tokens = _written(tokens, token, step)
        if keep_logits:
            live = ops.expand_dims(ops.logical_not(done), 1)
            logits = ops.where(live, ops.cast(logits, "float32"), 0.0)
            kept = _written(kept, logits, step)
        done = ops.logical_or(done, ops.equal(token, end_id))
        return step + 1, token, tokens, cache, done, kept

    state = (ops.convert_to_tensor(1, "int32"), token, tokens, cache, done)
    state = ops.while_loop(going, one_step, (*state, kept))
    tokens = state[2]
    ended = ops.logical_and(ops.equal(tokens, end_id), columns < max_new_tokens)
    # A row's length: up to its first end_id, else all of them.
    first_end = ops.where(
        ops.any(ended, axis=1),
        ops.argmax(ops.cast(ended, "int32"), axis=1) + 1,
        max_new_tokens,
    )
    first_end = ops.cast(first_end, "int32")
    tokens = ops.where(ops.expand_dims(first_end, 1) > columns, tokens, pad_id)
    out = {"tokens": tokens, "lengths": first_end}
    if keep_logits:
        out["logits"] = state[5]
    return out


def choose(logits, pad_id, keys, step, top_k=1, top_p=1.0, temperature=1.0):
    """The next token of each row from its logits `(B, V)`.

    Args:
        logits: `(B, V)`.
        pad_id: int or `None`. Never chosen.
        keys: `(B,)` from `prompt_keys`, or `None` for greedy (argmax).
        step: int or scalar int tensor. Which draw.
        top_k, top_p, temperature: as for `decode`. A Python `top_k` sorts
            only that many logits; a tensor needs TensorFlow (JAX's top-k
            takes a static count).

    Returns:
        int32 `(B,)`. Sampling is Gumbel-max: the argmax, over the kept
        tokens, of their logits divided by the temperature plus Gumbel
        noise, which samples their softmax. Token `j`'s noise is drawn
        from `_random.uniform(combine(keys, step), V)[:, j]`, computed only
        for the kept candidates.
    """
    logits = ops.cast(logits, "float32")
    vocabulary = logits.shape[1] or ops.shape(logits)[1]
    if pad_id is not None:
        is_pad = ops.equal(ops.arange(vocabulary, dtype="int32"), pad_id)
        logits = ops.where(is_pad, float("-inf"), logits)
    if keys is None or (isinstance(top_k, int) and top_k == 1):
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    if isinstance(top_k, int):
        count = min(top_k, vocabulary) if top_k > 0 else vocabulary
    else:
        top_k = ops.convert_to_tensor(top_k, "int32")
        count = ops.where(top_k > 0, ops.minimum(top_k, vocabulary), vocabulary)
    # The `count` largest logits, descending (ties: the lower id first, as
    # argmax), then the fewest of them whose probabilities reach top_p.
    ordered, ids = ops.top_k(logits, count)
    ids = ops.cast(ids, "int32")
    scaled = ordered / temperature
    kept = ordered > float("-inf")
    if not (isinstance(top_p, float) and top_p >= 1):
        probabilities = ops.softmax(scaled, axis=-1)
        before = ops.cumsum(probabilities, axis=-1) - probabilities
        kept = ops.logical_and(kept, before < top_p)
        kept = ops.logical_or(kept, ops.arange(count) == 0)  # never none
    draws = _draws_at(_random.combine(keys, step), ids)
    noisy = ops.where(kept, scaled - ops.log(-ops.log(draws)), float("-inf"))
    pick = ops.expand_dims(ops.argmax(noisy, axis=-1), 1)
    sampled = ops.take_along_axis(ids, ops.cast(pick, "int32"), axis=-1)
    return ops.where(ops.equal(top_k, 1), ids[:, 0], sampled[:, 0])


def _draws_at(keys, ids):
    """`_random.uniform(keys, V)` at columns `ids` `(B, K)`, clipped away
    from 0 and 1 so that `-log(-log(u))` is finite."""
    ids = ops.cast(ids, _random.key_dtype())
    random_bits = _random.bits_at(ops.expand_dims(keys, 1), ids)
    draws = _random.unit(_random.stream(random_bits, 0))
    return ops.clip(draws, _TINY, 1.0 - _TINY)


def prompt_keys(seed, ids, lengths, source_ids=None, pad_id=0):
    """Random keys `(B,)`: a function of the seed and each row's prompt
    (its length and its ids), and source if any, so a prompt draws the
    same in any batch.

    Args:
        seed: int or scalar int tensor.
        ids: int `(B, T)`, right-padded.
        lengths: int `(B,)`.
        source_ids: optional int `(B, S)`, right-padded with `pad_id`.
    """
    keys = ops.zeros((ops.shape(ids)[0],), _random.key_dtype())
    keys = _folded(_random.combine(keys, seed), ids, lengths)
    if source_ids is None:
        return keys
    source_ids = ops.convert_to_tensor(source_ids, "int32")
    real = ops.cast(ops.not_equal(source_ids, pad_id), "int32")
    return _folded(keys, source_ids, ops.sum(real, axis=1))


def _folded(keys, ids, lengths):
    """`keys` combined with each row's length, then its first `length`
    ids."""
    ids = ops.convert_to_tensor(ids, "int32")
    lengths = ops.convert_to_tensor(lengths, "int32")
    keys = _random.combine(keys, lengths)

    def fold(position, keys):
        column = ops.take(ids, position, axis=1)
        folded = _random.combine(keys, column)
        return ops.where(position < lengths, folded, keys)

    return ops.fori_loop(0, ops.shape(ids)[1], fold, keys)


def at(x, positions):
    """`x[b, positions[b]]` `(B, D)`, exact (a one-hot product)."""
    one_hot = ops.one_hot(positions, ops.shape(x)[1], dtype=x.dtype)
    return ops.einsum("bt,btd->bd", one_hot, x)


def _written(buffer, values, step):
    """`buffer` `(B, N, ...)` with `values` `(B, ...)` at column `step`."""
    at = ops.equal(ops.arange(ops.shape(buffer)[1], dtype="int32"), step)
    at = ops.reshape(at, (1, -1) + (1,) * (len(buffer.shape) - 2))
    return ops.where(at, ops.expand_dims(values, 1), buffer)
