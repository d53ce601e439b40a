"""Key/value caches and batched generation of prompts of different lengths."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_dynmask import MultiHeadAttention
from keras_dynmask import TransformerBlock
from keras_dynmask import models
from keras_dynmask.attention.cache import write_cache
from keras_dynmask.attention.cache import write_keys_and_values
from keras_dynmask.core import _random
from keras_dynmask.models import decoding
from keras_dynmask.models import generation
from tests.helpers import SIZES
from tests.helpers import VOCABULARY

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 3], [4, 4]]


def causal_lm(pattern="causal", seed=1):
    keras.utils.set_random_seed(seed)
    return models.build_causal_lm(VOCABULARY, pattern=pattern, **SIZES)


@functools.cache
def shared_lm(pattern="causal"):
    """One model per pattern for the tests that only read it, so that its
    compiled generation loop is compiled once for all of them."""
    return causal_lm(pattern)


def test_write_cache_puts_each_row_at_its_own_position():
    cache = np.arange(2 * 6 * 3, dtype="float32").reshape(2, 6, 3)
    new = -np.ones((2, 2, 3), "float32") * np.array([[[1]], [[2]]])
    written = ops.convert_to_numpy(write_cache(cache, new, np.array([1, 4])))
    expected = cache.copy()
    expected[0, 1:3] = new[0]
    expected[1, 4:6] = new[1]
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize(
    "pattern", ["causal", "causal & window(2)", "causal & ~window(1, 0)"]
)
def test_attention_with_a_cache_equals_the_whole_sequence(pattern):
    """Rows at different positions, fed one token at a time."""
    keras.utils.set_random_seed(0)
    mha = MultiHeadAttention(2, 4, pattern=pattern)
    x = np.random.default_rng(0).normal(size=(2, 7, 8)).astype("float32")
    whole = ops.convert_to_numpy(mha(x, x))
    cache = np.zeros((2, 2, 7, 2, 4), "float32")
    # Row 0 starts with a 3-token prefill, row 1 with 5 (one call of 5,
    # row 0's last two prefill positions are overwritten later).
    out, cache = mha(x[:, :5], x[:, :5], cache=cache, cache_index=0)
    out = ops.convert_to_numpy(out)
    np.testing.assert_allclose(out[1], whole[1, :5], atol=1e-5)
    np.testing.assert_allclose(out[0, :3], whole[0, :3], atol=1e-5)
    positions = np.array([3, 5])
    while positions.max() < 7:
        step = np.minimum(positions, 6)
        token = x[np.arange(2), step][:, None]
        out, cache = mha(token, token, cache=cache, cache_index=step)
        out = ops.convert_to_numpy(out)
        for row in range(2):
            if positions[row] < 7:
                np.testing.assert_allclose(
                    out[row, 0], whole[row, positions[row]], atol=1e-5
                )
        positions = positions + 1


def test_block_returns_its_updated_cache():
    block = TransformerBlock(2, 16, pattern="causal")
    x = np.random.default_rng(1).normal(size=(1, 4, 8)).astype("float32")
    whole = ops.convert_to_numpy(block(x))
    cache = np.zeros((1, 2, 4, 2, 4), "float32")
    outputs = []
    for position in range(4):
        out, cache = block(
            x[:, position : position + 1], cache=cache, cache_index=position
        )
        outputs.append(ops.convert_to_numpy(out)[:, 0])
    np.testing.assert_allclose(np.stack(outputs, 1), whole, atol=1e-5)
    assert np.abs(ops.convert_to_numpy(cache)).min(axis=(0, 1, 3, 4)).all()


def test_bad_caches_are_named():
    mha = MultiHeadAttention(2, 4, pattern="causal")
    x = np.zeros((1, 1, 8), "float32")
    with pytest.raises(ValueError, match="cache must have shape"):
        mha(x, x, cache=np.zeros((1, 2, 5, 3, 4), "float32"), cache_index=0)
    with pytest.raises(ValueError, match="pass it instead of offset"):
        mha(
            x,
            x,
            cache=np.zeros((1, 2, 5, 2, 4), "float32"),
            cache_index=0,
            offset=2,
        )
    different = MultiHeadAttention(2, 4, value_dim=3)
    with pytest.raises(ValueError, match="value_dim == key_dim"):
        different(
            x, x, cache=np.zeros((1, 2, 5, 2, 4), "float32"), cache_index=0
        )


@pytest.mark.parametrize("pattern", ["causal", "causal & window(2)"])
@pytest.mark.parametrize("top_k", [None, 5])
def test_cached_generation_equals_uncached(pattern, top_k):
    model = shared_lm(pattern)
    cached, cached_logits = generation.generate(
        model, PROMPTS, 8, top_k=top_k, return_logits=True
    )
    full, full_logits = generation.generate(
        model, PROMPTS, 8, top_k=top_k, use_cache=False, return_logits=True
    )
    assert cached == full
    np.testing.assert_allclose(cached_logits, full_logits, atol=1e-4)


@pytest.mark.parametrize("top_k", [None, 5])
def test_a_batch_equals_each_prompt_alone(top_k):
    model = shared_lm()
    batched = generation.generate(model, PROMPTS, 8, top_k=top_k, seed=7)
    alone = [
        generation.generate(model, [prompt], 8, top_k=top_k, seed=7)[0]
        for prompt in PROMPTS
    ]
    assert batched == alone
    reordered = generation.generate(
        model, PROMPTS[::-1], 8, top_k=top_k, seed=7
    )
    assert reordered == batched[::-1]


def test_sampling_follows_the_seed_and_the_top_k():
    model = shared_lm()
    first = generation.generate(model, PROMPTS, 12, top_k=3, seed=1)
    again = generation.generate(model, PROMPTS, 12, top_k=3, seed=1)
    other = generation.generate(model, PROMPTS, 12, top_k=3, seed=2)
    assert first == again
    assert first != other
    _, logits = generation.generate(
        model, PROMPTS, 12, top_k=3, seed=1, return_logits=True
    )
    logits[:, :, 0] = -np.inf  # the padding id is never drawn
    top = np.argsort(-logits, axis=-1)[..., :3]
    chosen = np.array(first)[..., None]
    assert (top == chosen).any(axis=-1).all()


def test_greedy_is_the_argmax_and_never_padding():
    model = shared_lm()
    tokens, logits = generation.generate(model, PROMPTS, 6, return_logits=True)
    logits[:, :, 0] = -np.inf
    np.testing.assert_array_equal(np.array(tokens), logits.argmax(-1))


def test_rows_stop_after_the_end_id():
    model = shared_lm()
    tokens = generation.generate(model, PROMPTS, 10)
    end_id = tokens[0][2]
    stopped = generation.generate(model, PROMPTS, 10, end_id=end_id)
    for row, full in zip(stopped, tokens, strict=True):
        if end_id in full:
            assert row == full[: full.index(end_id) + 1]
        else:
            assert row == full


SAMPLINGS = [
    {},
    {"top_k": 5, "seed": 3},
    {"top_p": 0.6, "seed": 4, "temperature": 0.7},
    {"top_k": 8, "top_p": 0.9, "seed": 5, "temperature": 1.5},
]


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("pattern", ["causal", "causal & window(2)"])
def test_compiled_generation_equals_step_by_step(sampling, pattern):
    model = shared_lm(pattern)
    compiled, compiled_logits = generation.generate(
        model, PROMPTS, 9, return_logits=True, **sampling
    )
    stepped, stepped_logits = generation.generate(
        model, PROMPTS, 9, return_logits=True, compiled=False, **sampling
    )
    assert compiled == stepped
    np.testing.assert_allclose(compiled_logits, stepped_logits, atol=1e-4)


def test_compiled_generation_stops_each_row_at_its_end_id():
    model = shared_lm()
    tokens = generation.generate(model, PROMPTS, 10, top_k=4, seed=2)
    end_id = tokens[1][3]
    compiled, logits = generation.generate(
        model, PROMPTS, 10, top_k=4, seed=2, end_id=end_id, return_logits=True
    )
    stepped = generation.generate(
        model, PROMPTS, 10, top_k=4, seed=2, end_id=end_id, compiled=False
    )
    assert compiled == stepped
    for row, full in enumerate(tokens):
        if end_id in full:
            assert compiled[row] == full[: full.index(end_id) + 1]
            # The steps after a row's end are not computed for it.
            assert not logits[row, len(compiled[row]) :].any()


def test_decode_pads_after_the_end_and_counts_the_new_tokens():
    model = shared_lm()
    lengths, ids = generation.pad_prompts(PROMPTS, 0)
    free = decoding.decode(model, ids, lengths, 7)
    end_id = int(free["tokens"][2, 2])
    out = decoding.decode(model, ids, lengths, 7, end_id=end_id)
    tokens = ops.convert_to_numpy(out["tokens"])
    for row, full in enumerate(ops.convert_to_numpy(free["tokens"]).tolist()):
        n = full.index(end_id) + 1 if end_id in full else 7
        assert int(out["lengths"][row]) == n
        assert tokens[row, :n].tolist() == full[:n]
        assert (tokens[row, n:] == 0).all()


def _numpy_choice(logits, top_k, top_p, temperature, keys, step):
    """Sampling written out in numpy, as generation did it before it was
    compiled (top-k by a sort), plus nucleus sampling by its definition."""
    logits = logits.astype("float64")
    logits[:, 0] = -np.inf  # the padding id
    ordered = -np.sort(-logits, axis=-1)
    keep = np.full(logits.shape, True)
    if top_k:
        keep &= logits >= ordered[:, top_k - 1 : top_k]
    if top_p < 1:
        for row in range(len(logits)):
            kept = np.where(keep[row], logits[row] / temperature, -np.inf)
            p = np.exp(kept - kept.max())
            p /= p.sum()
            order = np.argsort(-p, kind="stable")
            mass = np.cumsum(p[order]) - p[order]
            keep[row] &= np.isin(np.arange(p.size), order[mass < top_p])
    scaled = np.where(keep, logits / temperature, -np.inf)
    draws = _random.uniform(_random.combine(keys, step), logits.shape[1])
    draws = np.clip(ops.convert_to_numpy(draws), 2.0**-25, 1 - 2.0**-25)
    return (scaled - np.log(-np.log(draws.astype("float64")))).argmax(-1)


@pytest.mark.parametrize(
    ("top_k", "top_p", "temperature"),
    [(0, 1.0, 1.0), (1, 1.0, 1.0), (3, 1.0, 0.5), (0, 0.5, 1.0), (6, 0.8, 2)],
)
def test_choose_equals_a_numpy_oracle(top_k, top_p, temperature):
    rng = np.random.default_rng(top_k)
    logits = (rng.normal(size=(64, 40)) * 3).astype("float32")
    keys = decoding.prompt_keys(9, np.arange(64)[:, None] + 1, np.ones(64))
    for step in range(3):
        got = decoding.choose(
            logits, 0, keys, step, top_k, top_p, float(temperature)
        )
        want = _numpy_choice(logits, top_k, top_p, temperature, keys, step)
        np.testing.assert_array_equal(ops.convert_to_numpy(got), want)


def test_nucleus_sampling_keeps_to_the_nucleus():
    probabilities = np.array([[0.5, 0.3, 0.15, 0.05]] * 2000)
    logits = np.log(probabilities).astype("float32")
    logits = np.concatenate([np.zeros((2000, 1), "float32"), logits], 1)
    keys = decoding.prompt_keys(1, np.arange(2000)[:, None] + 1, np.ones(2000))
    counts = {}
    for top_p, allowed in [(0.45, {1}), (0.7, {1, 2}), (0.9, {1, 2, 3})]:
        chosen = ops.convert_to_numpy(
            decoding.choose(logits, 0, keys, 0, 0, top_p)
        )
        assert set(chosen.tolist()) == allowed, (top_p, set(chosen.tolist()))
        counts[top_p] = np.bincount(chosen, minlength=5)
    # Renormalized over {1, 2}: 0.5 / 0.8 = 0.625 of the draws are token 1.
    assert abs(counts[0.7][1] / 2000 - 0.625) < 0.04, counts[0.7]


def test_a_causal_lm_fed_in_pieces_equals_the_whole_model():
    """The cache stacked or as a list per block; rows at their own
    positions."""
    model = shared_lm()
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    whole = ops.convert_to_numpy(model(ids))
    for per_block in (False, True):
        cache = model.init_cache(2, 6, per_block=per_block)
        if per_block:
            assert [tuple(c.shape) for c in cache] == [(2, 2, 6, 2, 8)] * 2
        else:
            assert tuple(cache.shape) == (2, 2, 2, 6, 2, 8)
        logits, cache = model.call_with_cache(ids[:, :3], cache, 0)
        np.testing.assert_allclose(
            ops.convert_to_numpy(logits), whole[:, :3], atol=1e-5
        )
        assert isinstance(cache, list) == per_block
        # Row 1 writes position 2 again, then both go on one at a time.
        positions = np.array([3, 2])
        while positions.max() < 6:
            tokens = ids[np.arange(2), np.minimum(positions, 5)][:, None]
            logits, cache = model.call_with_cache(tokens, cache, positions)
            for row in np.flatnonzero(positions < 6):
                np.testing.assert_allclose(
                    ops.convert_to_numpy(logits)[row, 0],
                    whole[row, positions[row]],
                    atol=1e-5,
                )
            positions = positions + 1


@pytest.mark.tensorflow_only
def test_each_step_is_one_traced_function_of_one_position():
    """Under tf.function the model's `call_with_cache` runs in Python only
    while tracing: once for the prefill and once for the step, and once
    more each when the batch shape changes (shapes are then relaxed)."""
    model = causal_lm()
    traced = []
    call_with_cache = model.call_with_cache

    def counting(token_ids, cache, cache_index):
        traced.append(tuple(token_ids.shape))
        return call_with_cache(token_ids, cache, cache_index)

    model.call_with_cache = counting
    generation.generate(model, PROMPTS, 4)
    generation.generate(model, PROMPTS[:3], 9)
    steps = [shape for shape in traced if shape[1] == 1]
    assert len(traced) <= 4, traced
    assert 1 <= len(steps) <= 2, traced
    assert steps[-1][0] is None, "the batch shape was not relaxed"


def test_a_saved_causal_lm_generates_the_same_tokens(tmp_path):
    model = causal_lm()
    before = generation.generate(model, PROMPTS, 6, top_k=3, seed=4)
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert isinstance(loaded, models.CausalLM)
    assert loaded.get_config() == model.get_config()
    assert generation.generate(loaded, PROMPTS, 6, top_k=3, seed=4) == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompts": [[3], []]}, "non-empty"),
        ({"prompts": [[3, 0, 4]]}, "padding id 0"),
        ({"prompts": np.array([[3, 4]])}, "list of token id lists"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_k": VOCABULARY + 1}, "top_k"),
        ({"top_k": 2, "temperature": 0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 2, "seed": 2**31}, "seed must fit in 32 bits"),
        ({"top_k": 2, "seed": "1"}, "seed"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    model = shared_lm()
    call = {"prompts": [[3, 4]], "max_new_tokens": 2, **arguments}
    with pytest.raises(ValueError, match=message):
        generation.generate(model, **call)


@pytest.mark.parametrize(
    "pattern",
    # The last sees later keys only past 20 positions: a 16 x 16 probe
    # would pass it, and cached decoding would then differ from the model.
    ["bidirectional", "causal | window(1)", "causal | ~window(20)"],
)
def test_patterns_that_see_later_keys_cannot_generate(pattern):
    model = shared_lm(pattern)
    with pytest.raises(ValueError, match="no query may see a later key"):
        generation.generate(model, [[3]], 2)


def test_a_window_widened_to_the_future_cannot_generate():
    model = causal_lm("window(2, 0)")
    assert generation.generate(model, [[3]], 2)
    block = [layer for layer in model.layers if "block" in layer.name][0]
    block.pattern_variables["window_2_0_right"].assign(1)
    with pytest.raises(ValueError, match="no query may see a later key"):
        generation.generate(model, [[3]], 2)


def test_other_models_are_refused():
    ids = keras.Input((None,), dtype="int32")
    logits = keras.layers.Dense(VOCABULARY)(keras.layers.Embedding(50, 8)(ids))
    with pytest.raises(ValueError, match="needs a CausalLM"):
        generation.generate(keras.Model(ids, logits), [[3]], 2)


@pytest.mark.parametrize("length", [1, 3])
def test_keys_and_values_are_written_at_each_rows_position(length):
    """One position per row (a decoding step's select) and several (the
    general write) put each row's keys and values where `write_cache`
    does, and nothing else changes."""
    rng = np.random.default_rng(length)
    cache = rng.normal(size=(2, 2, 6, 3, 4)).astype("float32")
    keys = rng.normal(size=(2, length, 3, 4)).astype("float32")
    values = rng.normal(size=(2, length, 3, 4)).astype("float32")
    index = np.array([0, 6 - length])
    written = ops.convert_to_numpy(
        write_keys_and_values(cache, keys, values, index)
    )
    expected = cache.copy()
    for row, start in enumerate(index):
        expected[row, 0, start : start + length] = keys[row]
        expected[row, 1, start : start + length] = values[row]
    np.testing.assert_array_equal(written, expected)
    # One index for every row.
    shared = ops.convert_to_numpy(write_keys_and_values(cache, keys, values, 0))
    np.testing.assert_array_equal(
        shared[:, :, :length], np.stack([keys, values], 1)
    )
    np.testing.assert_array_equal(shared[:, :, length:], cache[:, :, length:])


torch_only = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile is PyTorch's"
)


@torch_only
def test_torch_compiled_steps_give_the_tokens_of_eager_steps():
    """With `jit_compile` (as after `model.compile(jit_compile=True)`),
    each step runs through torch.compile: the same tokens and logits,
    greedy and seeded top-k."""
    model = causal_lm(seed=4)
    eager = {
        k: generation.generate(
            model, PROMPTS, 6, top_k=k, seed=3, compiled=False
        )
        for k in (None, 5)
    }
    model.jit_compile = True
    for k, want in eager.items():
        got = generation.generate(model, PROMPTS, 6, top_k=k, seed=3)
        assert got == want


@torch_only
def test_a_step_torch_cannot_compile_runs_eagerly_with_a_warning(monkeypatch):
    import torch

    def no_compiler(function, **options):
        def failing(*arguments):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return failing

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = causal_lm(seed=5)
    want = generation.generate(model, PROMPTS, 4, compiled=False)
    model.jit_compile = True
    with pytest.warns(UserWarning, match="no C.. compiler"):
        got = generation.generate(model, PROMPTS, 4)
    assert got == want


@pytest.mark.parametrize(
    "mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_decoding_under_mixed_precision_follows_the_whole_model(mixed_policy):
    """Half-precision caches and decoding steps: finite logits near the
    whole model's, and generation runs compiled."""
    model = causal_lm(seed=6)
    ids = np.array([[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]])
    whole = ops.convert_to_numpy(ops.cast(model(ids), "float32"))
    cache = model.init_cache(2, 5)
    assert keras.backend.standardize_dtype(cache.dtype) in (
        "float16",
        "bfloat16",
    )
    _, cache = model.call_with_cache(ids[:, :2], cache, 0)
    for position in range(2, 5):
        logits, cache = model.call_with_cache(
            ids[:, position : position + 1], cache, position
        )
        logits = ops.convert_to_numpy(ops.cast(logits, "float32"))[:, 0]
        assert np.isfinite(logits).all()
        np.testing.assert_allclose(logits, whole[:, position], atol=0.05)
    if keras.backend.backend() == "jax" and mixed_policy == "mixed_float16":
        # jax.jit of Keras' dot_product_attention on float16 (the prompt's
        # prefill) fails on a CPU: "precision 'F16_F16_F32' is not
        # supported by dot_general on CPU" (as before this test existed).
        return
    tokens = generation.generate(model, PROMPTS, 5, top_k=3, seed=1)
    assert all(len(row) == 5 and 0 not in row for row in tokens)
