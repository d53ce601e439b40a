"""The main job's parts: corpus, tokenizer, batching, pretrain, fill-mask."""

import numpy as np
import pytest

from keras_dynmask import corpus
from keras_dynmask import data
from keras_dynmask import pretraining
from keras_dynmask.tokenizer import WordPieceTokenizer
from tests.helpers import run_cli
from tests.helpers import serve_in_fresh_process

TINY = {
    "vocabulary_size": 200,
    "max_length": 16,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "batch_size": 8,
    "max_selections": 4,
}


def _write_corpus(folder, documents=120, seed=0):
    rng = np.random.default_rng(seed)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our team"]
    verbs = ["reads", "writes", "likes", "finds", "opens"]
    objects = ["a book", "the letter", "some code", "the door", "a list"]
    blocks = []
    for _ in range(documents):
        sentences = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            for _ in range(int(rng.integers(1, 4)))
        ]
        blocks.append(" ".join(sentences))
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    return path


def test_default_corpus_is_large_and_stable():
    documents = corpus.default_corpus()
    assert sum(len(d.split()) for d in documents) > 200_000
    assert documents[:50] == corpus.default_corpus()[:50]
    training, held_out = corpus.split_documents(documents)
    assert 0.02 < len(held_out) / len(documents) < 0.1
    assert set(held_out).isdisjoint(training)


def test_bad_corpora_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        corpus.read_corpus(tmp_path / "missing")
    (tmp_path / "notes.md").write_text("not a text file")
    with pytest.raises(ValueError, match="no .txt files with text"):
        corpus.read_corpus(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="holds no text"):
        corpus.read_corpus(empty)
    with pytest.raises(ValueError, match="too small to split"):
        corpus.split_documents(["one document"])


def test_tokenizer_sequences_and_batches(tmp_path):
    documents = corpus.read_corpus(_write_corpus(tmp_path))
    with pytest.raises(ValueError, match="vocabulary_size=5"):
        WordPieceTokenizer.build(documents, 5)
    tokenizer = WordPieceTokenizer.build(documents, 100, cache_dir=tmp_path)
    again = WordPieceTokenizer.build(documents, 100, cache_dir=tmp_path)
    assert again.vocabulary == tokenizer.vocabulary
    ids = tokenizer.encode(["the cat [MASK] a book."])
    assert ids[0, 0] == tokenizer.cls_id
    assert tokenizer.mask_id in ids[0]
    assert tokenizer.decode(ids[0]) == "the cat [MASK] a book ."

    with pytest.raises(ValueError, match="max_length"):
        data.sequences(tokenizer, documents, 2)
    pieces = data.sequences(tokenizer, documents, 8)
    assert max(len(p) for p in pieces) <= 8
    assert all(
        p[0] == tokenizer.cls_id and p[-1] == tokenizer.sep_id for p in pieces
    )
    batches = list(data.batched(pieces, 4, seed=0))
    assert len(batches) == int(data.batched(pieces, 4).cardinality())
    assert sum(b.shape[0] for b in batches) == len(pieces)
    for batch in batches:
        batch = batch.numpy()
        # Each batch is padded only to its own longest sequence.
        assert (batch != 0).sum(axis=1).max() == batch.shape[1]


class _Interrupt(Exception):
    pass


def test_pretrain_writes_the_model_resumes_and_fills_masks(tmp_path):
    import keras

    path = _write_corpus(tmp_path)
    output = tmp_path / "model"

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise _Interrupt

    with pytest.raises(_Interrupt):
        pretraining.pretrain(
            corpus_path=path,
            output=output,
            epochs=2,
            log=lambda line: None,
            callbacks=[StopAfterFirstEpoch()],
            **TINY,
        )
    assert (output / "backup").exists()
    lines = []
    results = pretraining.pretrain(
        corpus_path=path, output=output, epochs=2, log=lines.append, **TINY
    )
    assert results["epochs_run"] == 1  # resumed at the second epoch
    assert not (output / "backup").exists()
    for name in ("model.keras", "vocabulary.txt", "settings.json", "1"):
        assert (output / name).exists(), name
    assert any(line.startswith("Held-out masked-LM accuracy") for line in lines)
    saved = [line for line in lines if "largest difference from Keras" in line]
    gaps = [float(x.split()[-1]) for x in saved[0].split(":")[-1].split(",")]
    assert max(gaps) < 1e-4, saved

    # The raw-text signature, in a process without this package.
    model, tokenizer = pretraining.load(output)
    text = "the cat [MASK] a book."
    want = model.predict(tokenizer.encode([text]), verbose=0)
    got = serve_in_fresh_process(
        output / "1",
        "serve_text",
        f"text=tf.constant([{text!r}])",
        imports=", tensorflow_text",
    )
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    np.testing.assert_array_equal(got["mask_positions"], want["mask_positions"])

    run = run_cli(
        "fill-mask",
        "the cat [MASK] a book.",
        "--model",
        str(output),
        "--top-k",
        "3",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Fill-mask: the cat [MASK] a book.")
    assert "[MASK] at 3:" in run.stdout
    missing = run_cli(
        "fill-mask", "a [MASK]", "--model", str(tmp_path / "nothing")
    )
    assert missing.returncode == 2
    assert "No trained model" in missing.stderr


def test_pretrain_rejects_bad_settings(tmp_path):
    path = _write_corpus(tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        pretraining.pretrain(
            corpus_path=path, output=tmp_path / "m", **{**TINY, "max_length": 2}
        )
    with pytest.raises(ValueError, match="vocabulary_size=4"):
        pretraining.pretrain(
            corpus_path=path,
            output=tmp_path / "m",
            **{**TINY, "vocabulary_size": 4},
        )
