"""Masked-LM selection and replacement as pure `keras.ops` functions.

Shared by the `TokenMasking` layer and the tf.data step, so both follow one
set of rules:

- a *candidate* is a real token (not padding) whose id is selectable;
- with `word_starts`, a word (a start token and the continuations after it)
  is selected or not as a whole; without it, every token is its own word;
- `count="exact"` selects `min(ceil(rate * n), K)` of the `n` candidate
  words per row (tensorflow-text's rule); `count="bernoulli"` flips one
  coin per word (HuggingFace's rule); either way at most `K` tokens are
  selected, and a word that would not fit whole is left out;
- each selected token becomes the mask token with probability
  `mask_token_rate`, a random drawable token with `random_token_rate`, and
  stays itself otherwise.

Randomness comes from per-row keys (`keras_dynmask.core._random`), so
results are a function of (key, position) only.
"""

import math

import numpy as np
from keras import ops

from keras_dynmask.core import _random

# Streams derived from the selection scores' random bits.
_DECISIONS, _REPLACEMENTS, _SPAN_LENGTHS = 1, 2, 3
# `ceil` tolerance: 0.15 * 20 is 3.0000000000000004 in floating point.
_CEIL_TOLERANCE = 1e-4


def word_starts_from_vocabulary(token_ids, vocabulary):
    """Flags the tokens that start a word, from a WordPiece vocabulary.

    A token whose text starts with `##` continues the word before it.

    Args:
        token_ids: int `(B, T)`, ids into `vocabulary`.
        vocabulary: list of str, the tokens in id order.

    Returns:
        bool `(B, T)`: `True` where a word starts (ids outside the
        vocabulary count as word starts).

    Example:

    >>> from keras_dynmask.core.masked_lm import word_starts_from_vocabulary
    >>> vocab = ["[PAD]", "play", "##ing", "ball", "##s"]
    >>> word_starts_from_vocabulary([[1, 2, 3, 4, 0]], vocab).numpy()
    array([[ True, False,  True, False,  True]])
    """
    return word_starts_from_table(token_ids, continuation_table(vocabulary))


def continuation_table(vocabulary):
    """Bools by id: `True` for a token that continues the word before it
    (a WordPiece token whose text starts with `##`)."""
    return [str(token).startswith("##") for token in vocabulary]


def word_starts_from_table(token_ids, continues):
    """Flags the tokens that start a word: all but those `continues` marks.

    Args:
        token_ids: int `(B, T)`.
        continues: bools by id (`continuation_table`). Ids outside it
            count as word starts.

    Returns:
        bool `(B, T)`.
    """
    vocabulary_size = len(continues)
    table = ops.convert_to_tensor(np.append(np.asarray(continues, bool), False))
    token_ids = ops.convert_to_tensor(token_ids, "int32")
    inside = ops.logical_and(
        ops.greater_equal(token_ids, 0), ops.less(token_ids, vocabulary_size)
    )
    index = ops.where(inside, token_ids, vocabulary_size)
    return ops.logical_not(ops.take(table, index))


def word_ids(word_starts, candidates):
    """Word index of every token, `(B, T)` int32.

    A new word starts at each flagged token and wherever candidacy changes,
    so no word mixes selectable and unselectable tokens.
    """
    previous = ops.pad(candidates[:, :-1], ((0, 0), (1, 0)))
    starts = ops.logical_or(
        ops.cast(word_starts, "bool"), ops.not_equal(candidates, previous)
    )
    first = ops.expand_dims(ops.equal(ops.arange(ops.shape(starts)[1]), 0), 0)
    starts = ops.logical_or(starts, first)
    return ops.cumsum(ops.cast(starts, "int32"), axis=1) - 1


def span_ids(words, candidates, span_scores, p, max_span_length):
    """Cuts the words of each row into spans of geometric length.

    Span lengths, in words, follow SpanBERT's distribution: geometric with
    parameter `p`, truncated at `max_span_length` and renormalized (mean
    3.8 words for p = 0.2 and 10). A span also ends where candidacy changes
    (before padding or a special token) and at the end of the row.

    Args:
        words: int32 `(B, T)`, from `word_ids`.
        candidates: bool `(B, T)`.
        span_scores: float32 `(B, T)` uniform; slot `i` sets the length of
            span `i`.
        p: float in `(0, 1)`.
        max_span_length: int >= 1.

    Returns:
        int32 `(B, T)`: the span index of every token.
    """
    batch, length = ops.shape(words)[0], ops.shape(words)[1]
    # Inverse CDF of the truncated geometric distribution on 1..max.
    tail = (1.0 - p) ** max_span_length
    lengths = ops.ceil(
        ops.log(1.0 - span_scores * (1.0 - tail)) / float(math.log(1.0 - p))
    )
    lengths = ops.clip(ops.cast(lengths, "int32"), 1, max_span_length)
    # The first word of every span, marked in word space (B, T + 1).
    starts = ops.minimum(ops.cumsum(lengths, axis=1) - lengths, length)
    rows = ops.broadcast_to(
        ops.expand_dims(ops.arange(batch, dtype="int32"), 1), (batch, length)
    )
    indices = ops.reshape(ops.stack([rows, starts], axis=-1), (-1, 2))
    flags = ops.scatter(
        indices, ops.ones((batch * length,), "int32"), (batch, length + 1)
    )
    span_start_word = ops.greater(flags[:, :length], 0)
    is_word_start = ops.not_equal(
        words, ops.pad(words[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    )
    changed = ops.not_equal(
        candidates, ops.pad(candidates[:, :-1], ((0, 0), (1, 0)))
    )
    span_start = ops.logical_and(
        is_word_start,
        ops.logical_or(
            ops.take_along_axis(span_start_word, words, axis=1), changed
        ),
    )
    return ops.cumsum(ops.cast(span_start, "int32"), axis=1) - 1


def _candidates_and_wanted(
    candidates, scores, n_items, rate, max_selections, count
):
    """Bernoulli keeps the items whose score (uniform) is below the rate:
    one coin each; the scores of the winners stay uniform, so ranking them
    still picks a uniform subset when more than `K` win."""
    rate = ops.cast(rate, "float32")
    if count == "bernoulli":
        candidates = ops.logical_and(candidates, ops.less(scores, rate))
        return candidates, None
    wanted = ops.ceil(ops.cast(n_items, "float32") * rate - _CEIL_TOLERANCE)
    return candidates, ops.minimum(ops.cast(wanted, "int32"), max_selections)


def select_tokens(candidates, scores, rate, max_selections, count):
    """Chooses tokens among the candidates (every token is its own word).

    Args:
        candidates: bool `(B, T)`.
        scores: float32 `(B, T)`, uniform in `[0, 1)`.
        rate: float or scalar tensor. Selection rate.
        max_selections: int. `K`, the most tokens selected per row.
        count: `"exact"` or `"bernoulli"`.

    Returns:
        `(selected, positions, weights)`: bool `(B, T)`, and as in
        `gather_selection`.
    """
    n_items = ops.sum(ops.cast(candidates, "int32"), axis=1)
    candidates, wanted = _candidates_and_wanted(
        candidates, scores, n_items, rate, max_selections, count
    )
    if wanted is None:
        wanted = ops.minimum(
            ops.sum(ops.cast(candidates, "int32"), axis=1), max_selections
        )
    width, spare = _top_width(max_selections, candidates.shape[1])
    if count == "bernoulli" and _fits_row(max_selections, candidates.shape[1]):
        # Every winner fits under the cap: no ranking.
        selected = candidates
    else:
        selected = _best(candidates, scores, wanted, width, spare)
    return (selected, *gather_selection(candidates, selected, max_selections))


def _fits_row(max_selections, static_length):
    """Whether `K` is known to be at least the row's length `T`."""
    if not isinstance(max_selections, int):
        return True  # `K` is `T`
    return static_length is not None and max_selections >= static_length


def _best(candidates, scores, wanted, width, spare):
    """bool `(B, T)`: the `wanted` best-scored candidates of each row (ties
    to the earlier position), from the `width` best (`top_k`).

    A row seldom wants more than a quarter of its width (a rate of 0.15
    wants 20 of 128), so when the width is large the `top_k` of a quarter
    runs unless this batch needs more: `top_k` costs grow with `k` (XLA
    sorts whole rows for `k = T`: 5 ms against 1.7 ms for `k = T / 4` at
    B = 256, T = 128)."""
    length = ops.shape(candidates)[1]
    # Rows padded with `spare` non-candidates when T is not known while
    # tracing and K may exceed it.
    ranked = ops.where(candidates, scores, -1.0)
    if spare:
        ranked = ops.pad(ranked, ((0, 0), (0, spare)), constant_values=-2.0)

    def top(k):
        def flags():
            _, picked = ops.top_k(ranked, k)
            used = ops.less(ops.arange(k), ops.expand_dims(wanted, 1))
            return _flags(ops.cast(picked, "int32"), used, length, spare)

        return flags

    if not isinstance(width, int) or width < 128:
        return top(width)()
    quarter = width // 4
    most = ops.max(ops.concatenate([wanted, ops.zeros((1,), wanted.dtype)]))
    return ops.cond(ops.less_equal(most, quarter), top(quarter), top(width))


def _top_width(max_selections, static_length):
    """`(k, spare)`: how many best candidates to take, and how many
    non-candidate columns to append so that a row has `k` entries."""
    if not isinstance(max_selections, int):
        return max_selections, 0  # `K` is the row's length `T`
    if static_length is None:
        return max_selections, max_selections
    return min(max_selections, static_length), 0


def _flags(picked, used, length, spare):
    """bool `(B, T)`: `True` at the positions `picked` `(B, k)` (distinct
    per row, below `T + spare`) in its `used` slots; O(B k), by scatter."""
    batch = ops.shape(picked)[0]
    rows = ops.broadcast_to(
        ops.expand_dims(ops.arange(batch, dtype="int32"), 1),
        ops.shape(picked),
    )
    indices = ops.reshape(ops.stack([rows, picked], axis=-1), (-1, 2))
    counts = ops.scatter(
        indices,
        ops.reshape(ops.cast(used, "int32"), (-1,)),
        (batch, length + spare),
    )
    return ops.greater(counts[:, :length], 0)


def select_words(
    candidates, words, scores, rate, max_selections, count, budget="words"
):
    """Chooses whole words (or spans) among the candidates.

    Args:
        candidates: bool `(B, T)`.
        words: int32 `(B, T)`, from `word_ids` or `span_ids`.
        scores: float32 `(B, T)`, uniform in `[0, 1)`; word `w` uses
            `scores[:, w]`.
        rate: float or scalar tensor. Selection rate.
        max_selections: int. `K`, the most tokens selected per row.
        count: `"exact"` or `"bernoulli"`.
        budget: `"words"`: exact mode selects `ceil(rate * n_words)` words
            (tensorflow-text's rule). `"tokens"`: it adds words in random
            order until `ceil(rate * n_tokens)` tokens are selected (the
            last one may pass the mark; SpanBERT's rule).

    Returns:
        bool `(B, T)`, the selected tokens.
    """
    batch, length = ops.shape(candidates)[0], ops.shape(candidates)[1]
    word_scores = ops.take_along_axis(scores, words, axis=1)
    # A word is counted once, at its first token.
    is_start = ops.not_equal(
        words, ops.pad(words[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    )
    if budget == "tokens":
        n_items = ops.sum(ops.cast(candidates, "int32"), axis=1)
    else:
        n_items = ops.sum(
            ops.cast(ops.logical_and(is_start, candidates), "int32"), axis=1
        )
    candidates, wanted = _candidates_and_wanted(
        candidates, word_scores, n_items, rate, max_selections, count
    )
    if wanted is None:
        wanted = ops.full_like(n_items, length)

    # Sort tokens by their word's score; a word's tokens stay together
    # (equal scores; top_k keeps ties in position order).
    scores = ops.where(candidates, word_scores, -1.0)
    sorted_scores, order = ops.top_k(scores, length)
    sorted_candidates = ops.take_along_axis(candidates, order, axis=1)
    sorted_words = ops.take_along_axis(words, order, axis=1)
    new_word = ops.not_equal(
        sorted_words,
        ops.pad(sorted_words[:, :-1], ((0, 0), (1, 0)), constant_values=-1),
    )
    rank = ops.cumsum(ops.cast(new_word, "int32"), axis=1) - 1
    tokens_so_far = ops.cumsum(ops.cast(sorted_candidates, "int32"), axis=1)
    # Tokens used once this token's whole word is in: the running count at
    # the word's last token, gathered back to every token of the word.
    flat_rank = rank + ops.expand_dims(ops.arange(batch) * length, 1)
    word_end = ops.segment_max(
        ops.reshape(tokens_so_far, (-1,)),
        ops.reshape(flat_rank, (-1,)),
        num_segments=batch * length,
    )
    tokens_at_word_end = ops.reshape(
        ops.take(word_end, ops.reshape(flat_rank, (-1,))), (batch, length)
    )
    if budget == "tokens" and count == "exact":
        # A word goes in while the budget is not yet met before it.
        word_start = ops.segment_min(
            ops.reshape(tokens_so_far, (-1,)),
            ops.reshape(flat_rank, (-1,)),
            num_segments=batch * length,
        )
        tokens_before = ops.reshape(
            ops.take(word_start, ops.reshape(flat_rank, (-1,))),
            (batch, length),
        )
        wanted_here = ops.less_equal(tokens_before, ops.expand_dims(wanted, 1))
    else:
        wanted_here = ops.less(rank, ops.expand_dims(wanted, 1))
    chosen = ops.logical_and(
        sorted_candidates,
        ops.logical_and(
            wanted_here, ops.less_equal(tokens_at_word_end, max_selections)
        ),
    )
    # Back to position order.
    return ops.take_along_axis(chosen, ops.argsort(order, axis=1), axis=1)


def gather_selection(token_ids, selected, max_selections):
    """The selected positions in order, padded to `K`.

    Each selected position goes to the slot its rank in the row gives
    (a cumulative sum, then a scatter: no sort).

    Returns:
        `(positions, weights)`: int32 `(B, K)` positions (0 where unused),
        the first `K` selected of each row, and float32 `(B, K)` weights (1
        for a real selection).
    """
    batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    selected = ops.cast(selected, "int32")
    slot = ops.cumsum(selected, axis=1) - 1
    kept = ops.logical_and(
        ops.greater(selected, 0), ops.less(slot, max_selections)
    )
    # Positions not kept land in a spare slot `K`, dropped below.
    slot = ops.where(kept, slot, max_selections)
    rows = ops.broadcast_to(
        ops.expand_dims(ops.arange(batch, dtype="int32"), 1), (batch, length)
    )
    indices = ops.reshape(ops.stack([rows, slot], axis=-1), (-1, 2))
    values = ops.where(kept, ops.arange(length, dtype="int32"), 0)
    positions = ops.scatter(
        indices, ops.reshape(values, (-1,)), (batch, max_selections + 1)
    )[:, :max_selections]
    n_selected = ops.sum(selected, axis=1, keepdims=True)
    used = ops.less(ops.arange(max_selections), n_selected)
    return positions, ops.cast(used, "float32")


def replace(
    token_ids,
    selected,
    decision_bits,
    replacement_bits,
    mask_token_id,
    mask_token_rate,
    random_token_rate,
    drawable_ids,
):
    """Applies the mask / random / keep decision to the selected tokens.

    One stream may serve both choices (`decision_bits` is
    `replacement_bits`): its top 24 bits decide, and within the random band
    its bits are uniform over a range of about 2**28 values, so their
    remainder picks a replacement with a bias below vocabulary / 2**28.

    Returns:
        int32 `(B, T)`: the masked token ids.
    """
    decision = _random.unit(decision_bits)
    to_mask = ops.logical_and(selected, ops.less(decision, mask_token_rate))
    masked = ops.where(to_mask, mask_token_id, token_ids)
    if random_token_rate > 0 and drawable_ids is not None:
        to_random = ops.logical_and(
            ops.logical_and(selected, ops.logical_not(to_mask)),
            ops.less(decision, mask_token_rate + random_token_rate),
        )
        size = ops.shape(drawable_ids)[0]
        index = ops.cast(ops.mod(replacement_bits, size), "int32")
        random_ids = ops.take(drawable_ids, index)
        masked = ops.where(to_random, random_ids, masked)
    return ops.cast(masked, token_ids.dtype)


def mask_tokens(
    token_ids,
    keys,
    valid,
    unselectable_ids,
    mask_token_id,
    selection_rate,
    mask_token_rate,
    random_token_rate,
    max_selections,
    drawable_ids,
    count="exact",
    word_starts=None,
    spans=None,
):
    """Selects and replaces tokens for masked-LM training.

    Args:
        token_ids: int `(B, T)`.
        keys: `(B,)` keys from `_random`; the result is a function of them.
        valid: bool `(B, T)`. Real (non-padding) positions.
        unselectable_ids: int tensor `(U,)` or `None`. Never selected.
        mask_token_id: int.
        selection_rate: float or scalar tensor (a variable to schedule it).
        mask_token_rate: float. Share of selections set to the mask token.
        random_token_rate: float. Share set to a random drawable token.
        max_selections: int. `K`.
        drawable_ids: int tensor `(M,)`. Random replacements come from here.
        count: `"exact"` or `"bernoulli"`.
        word_starts: bool `(B, T)` or `None` (every token is a word).
        spans: `None`, or `(p, max_span_length)` for SpanBERT span masking:
            spans of whole words with geometric lengths, one replacement
            decision per span, and a budget of `rate` of the tokens.

    Returns:
        A dict: `token_ids` `(B, T)`, `mask` bool `(B, T)`,
        `mask_positions` int32 `(B, K)`, `mask_ids` `(B, K)`,
        `mask_weights` float32 `(B, K)`.
    """
    candidates = ops.cast(valid, "bool")
    if unselectable_ids is not None:
        special = ops.any(
            ops.equal(
                ops.expand_dims(token_ids, -1),
                ops.reshape(
                    ops.cast(unselectable_ids, token_ids.dtype), (1, 1, -1)
                ),
            ),
            axis=-1,
        )
        candidates = ops.logical_and(candidates, ops.logical_not(special))
    random_bits = _random.bits(keys, ops.shape(token_ids)[1])
    scores = _random.unit(random_bits)
    decision_bits = _random.stream(random_bits, _DECISIONS)
    replacement_bits = decision_bits
    if word_starts is None and spans is None:
        selected, positions, weights = select_tokens(
            candidates, scores, selection_rate, max_selections, count
        )
    else:
        if word_starts is None:
            word_starts = ops.ones_like(candidates)
        words = word_ids(word_starts, candidates)
        budget = "words"
        if spans is not None:
            span_scores = _random.unit(
                _random.stream(random_bits, _SPAN_LENGTHS)
            )
            words = span_ids(words, candidates, span_scores, *spans)
            budget = "tokens"
            # One decision per span, a replacement token per position.
            decision_bits = ops.take_along_axis(decision_bits, words, axis=1)
            replacement_bits = _random.stream(random_bits, _REPLACEMENTS)
        selected = select_words(
            candidates,
            words,
            scores,
            selection_rate,
            max_selections,
            count,
            budget=budget,
        )
        positions, weights = gather_selection(
            token_ids, selected, max_selections
        )
    masked = replace(
        token_ids,
        selected,
        decision_bits,
        replacement_bits,
        mask_token_id,
        mask_token_rate,
        random_token_rate,
        drawable_ids,
    )
    return _outputs(token_ids, masked, selected, positions, weights)


def static_keys(keys, seed, token_ids, valid, dupe_factor):
    """Row keys for BERT's static masking.

    The mask of an example is fixed by its real tokens and one of
    `dupe_factor` copies; `keys` (fresh each sighting) only pick the copy.

    Returns:
        `(B,)` keys.
    """
    dtype = _random.key_dtype()
    copy = ops.cast(_random.uniform(keys, 1)[:, 0] * dupe_factor, dtype)
    base = _random.combine(ops.zeros((), dtype), seed)
    ids = ops.where(valid, token_ids, -1)
    positions = ops.arange(ops.shape(ids)[1], dtype=dtype)
    # A hash per (position, id) pair, summed: the same tokens in the same
    # places give the same fingerprint, whatever the padding after them.
    # The sum is taken in 16-bit halves, so it fits int32 up to T = 32768.
    cells = _random.combine(_random.combine(base, ids), positions[None, :])
    cells = ops.where(valid, cells, 0)
    low = ops.sum(ops.bitwise_and(cells, 0xFFFF), axis=1)
    high = ops.sum(ops.right_shift(cells, 16), axis=1)
    fingerprint = _random.combine(_random.combine(base, low), high)
    return _random.combine(fingerprint, copy)


def find_mask_tokens(token_ids, valid, mask_token_id, max_selections):
    """Inference: the positions that already hold the mask token.

    No random op: what a fill-mask request marked is what gets predicted.
    Returns the same dict as `mask_tokens`, with `token_ids` unchanged; past
    `K` mask tokens, the first `K` are selected.
    """
    selected = ops.logical_and(
        ops.cast(valid, "bool"), ops.equal(token_ids, mask_token_id)
    )
    seen = ops.cumsum(ops.cast(selected, "int32"), axis=1)
    selected = ops.logical_and(selected, ops.less_equal(seen, max_selections))
    positions, weights = gather_selection(token_ids, selected, max_selections)
    return _outputs(token_ids, token_ids, selected, positions, weights)


def _outputs(original, masked, selected, positions, weights):
    # One spare column keeps position 0 valid when T = 0.
    spare = ops.pad(original, ((0, 0), (0, 1)))
    mask_ids = ops.take_along_axis(spare, positions, axis=1)
    mask_ids = ops.where(ops.greater(weights, 0), mask_ids, 0)
    return {
        "token_ids": masked,
        "mask_positions": positions,
        "mask_ids": mask_ids,
        "mask_weights": weights,
        "mask": selected,
    }
