"""An encoder-decoder decoding with self- and cross-attention caches."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_dynmask import TransformerBlock
from keras_dynmask import models
from keras_dynmask.models import generation
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import right_padded
from tests.helpers import to_numpy

SOURCE_VOCABULARY = 30
# Sources of different lengths; target prompts of different lengths.
SOURCES = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8, 9], [11]]
PROMPTS = [[1], [1, 4], [1], [1, 7, 8]]


@functools.cache
def seq2seq():
    keras.utils.set_random_seed(2)
    return models.build_seq2seq(SOURCE_VOCABULARY, VOCABULARY, **SIZES)


def test_a_block_reading_its_context_cache_equals_reading_the_context():
    keras.utils.set_random_seed(0)
    block = TransformerBlock(2, 16, pattern="causal", cross_attention=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    context = rng.normal(size=(2, 4, 8)).astype("float32")
    context_mask = np.array([[True] * 4, [True, True, False, False]])
    whole = to_numpy(block(x, context=context, context_mask=context_mask))
    context_cache = block.context_keys_and_values(context)
    assert tuple(context_cache.shape) == (2, 2, 4, 2, 4)
    cache = np.zeros((2, 2, 5, 2, 4), "float32")
    for position in range(5):
        out, cache = block(
            x[:, position : position + 1],
            cache=cache,
            cache_index=position,
            context_cache=context_cache,
            context_mask=context_mask,
        )
        np.testing.assert_allclose(
            to_numpy(out)[:, 0], whole[:, position], atol=1e-5
        )


def test_a_block_without_cross_attention_has_no_context_cache():
    block = TransformerBlock(2, 16)
    block(np.zeros((1, 2, 8), "float32"))
    with pytest.raises(ValueError, match="no cross-attention"):
        block.context_keys_and_values(np.zeros((1, 2, 8), "float32"))
    with pytest.raises(ValueError, match="cross_attention=False"):
        block(np.zeros((1, 2, 8)), context_cache=np.zeros((1, 2, 2, 2, 4)))


def test_decoding_in_pieces_equals_the_whole_model():
    """Rows at their own positions; the cache stacked or per block."""
    model = seq2seq()
    source = right_padded(SOURCES)
    target = np.array(
        [[1, 12, 13, 14, 15], [1, 4, 16, 17, 0], [1, 18, 19, 20, 21], [1] * 5]
    )
    whole = to_numpy(model({"source_ids": source, "target_ids": target}))
    for per_block in (False, True):
        cache = model.init_cache(source, 5, per_block=per_block)
        if per_block:
            stacked = model.init_cache(source, 5)
            for part, length in (("self", 5), ("cross", 7)):
                assert [tuple(c.shape) for c in cache[part]] == [
                    (4, 2, length, 2, 8)
                ] * 2
                np.testing.assert_array_equal(
                    np.stack([to_numpy(c) for c in cache[part]], 1),
                    to_numpy(stacked[part]),
                )
        else:
            assert tuple(cache["self"].shape) == (4, 2, 2, 5, 2, 8)
            assert tuple(cache["cross"].shape) == (4, 2, 2, 7, 2, 8)
        logits, cache = model.call_with_cache(target[:, :2], cache, 0)
        np.testing.assert_allclose(to_numpy(logits), whole[:, :2], atol=1e-5)
        assert isinstance(cache["self"], list) == per_block
        # Rows 0 and 2 go on from position 2, rows 1 and 3 from 3 (their
        # position 2 written again with its own token).
        positions = np.array([2, 2, 2, 2])
        while positions.max() < 5:
            tokens = target[np.arange(4), np.minimum(positions, 4)][:, None]
            logits, cache = model.call_with_cache(tokens, cache, positions)
            for row in range(4):
                np.testing.assert_allclose(
                    to_numpy(logits)[row, 0],
                    whole[row, positions[row]],
                    atol=1e-5,
                )
            positions = positions + 1


SAMPLINGS = [
    {},
    {"top_k": 5, "seed": 3},
    {"top_p": 0.8, "seed": 4, "temperature": 0.7, "end_id": 9},
]


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_compiled_equals_step_by_step_equals_the_whole_model(sampling):
    model = seq2seq()
    runs = [
        generation.generate(
            model,
            PROMPTS,
            7,
            sources=SOURCES,
            return_logits=True,
            **settings,
            **sampling,
        )
        for settings in ({}, {"compiled": False}, {"use_cache": False})
    ]
    (compiled, compiled_logits), (stepped, _), (full, full_logits) = runs
    assert compiled == stepped == full
    # The compiled loop leaves a row's steps after its end at zero.
    for row, tokens in enumerate(compiled):
        np.testing.assert_allclose(
            compiled_logits[row, : len(tokens)],
            full_logits[row, : len(tokens)],
            atol=1e-4,
        )


@pytest.mark.parametrize("top_k", [None, 4])
def test_a_batch_equals_each_source_alone(top_k):
    model = seq2seq()
    batched = generation.generate(
        model, PROMPTS, 6, top_k=top_k, seed=5, sources=SOURCES
    )
    alone = [
        generation.generate(
            model, [prompt], 6, top_k=top_k, seed=5, sources=[source]
        )[0]
        for prompt, source in zip(PROMPTS, SOURCES, strict=True)
    ]
    assert batched == alone


def test_the_source_decides_the_translation_and_its_draws():
    model = seq2seq()
    prompts = [[1]] * 3
    sources = [[5, 6, 7], [5, 6, 7], [7, 6, 5]]
    greedy = generation.generate(model, prompts, 6, sources=sources)
    assert greedy[0] == greedy[1]
    sampled = generation.generate(
        model, prompts, 12, top_k=8, seed=1, sources=sources
    )
    assert sampled[0] == sampled[1]
    # Another source draws otherwise, even where its logits were alike.
    assert sampled[0] != sampled[2]


def test_a_saved_seq2seq_decodes_the_same_tokens(tmp_path):
    model = seq2seq()
    before = generation.generate(model, PROMPTS, 5, sources=SOURCES, top_k=3)
    model.save(tmp_path / "translator.keras")
    loaded = keras.saving.load_model(tmp_path / "translator.keras")
    assert isinstance(loaded, models.Seq2Seq)
    assert loaded.get_config() == model.get_config()
    again = generation.generate(loaded, PROMPTS, 5, sources=SOURCES, top_k=3)
    assert again == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"sources": None}, "pass sources="),
        ({"sources": [[3], [4]]}, "one source per prompt"),
        ({"sources": [[]]}, "sources must be non-empty"),
        ({"sources": [[3, 0, 4]]}, r"sources\[0\] is \[3, 0, 4\]"),
        ({"sources": np.array([[3]])}, "sources must be a list"),
    ],
)
def test_bad_sources_are_named(arguments, message):
    call = {"prompts": [[1]], "max_new_tokens": 2, **arguments}
    with pytest.raises(ValueError, match=message):
        generation.generate(seq2seq(), **call)


def test_a_causal_lm_takes_no_sources():
    keras.utils.set_random_seed(0)
    lm = models.build_causal_lm(VOCABULARY, **SIZES)
    with pytest.raises(ValueError, match="sources are for a Seq2Seq"):
        generation.generate(lm, [[3]], 2, sources=[[4]])


def test_the_encoder_runs_once_per_generation():
    model = seq2seq()
    calls = []
    encode = model.encode

    def counted(source_ids):
        calls.append(tuple(ops.shape(source_ids)))
        return encode(source_ids)

    model.encode = counted
    try:
        generation.generate(model, PROMPTS, 5, sources=SOURCES, compiled=False)
    finally:
        del model.encode
    assert calls == [(4, 7)]
