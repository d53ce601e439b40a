"""A corpus too large to hold: read a paragraph at a time, its held-out
split and its batches the same in every run."""

import numpy as np
import pytest

from keras_dynmask.app import corpus
from keras_dynmask.app import training_data
from keras_dynmask.app.pretraining_defaults import DEFAULTS
from keras_dynmask.tf import data
from tests.test_pretraining import TINY
from tests.test_pretraining import _write_corpus

pytestmark = pytest.mark.tensorflow_only


def _folder(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for index in range(3):
        _write_corpus(folder, documents=150, seed=index).rename(
            folder / f"part-{index}.txt"
        )
    (folder / "random.txt").write_bytes(np.random.default_rng(1).bytes(4096))
    return folder


def test_streamed_documents_are_the_documents_read_whole(tmp_path):
    folder = _folder(tmp_path)
    lines = []
    files = corpus.corpus_files(folder)
    streamed = list(corpus.stream_documents(files, log=lines.append))
    assert streamed == corpus.read_corpus(folder, log=lambda line: None)
    assert len(lines) == 1 and "random.txt (not UTF-8" in lines[0]
    lines = []
    run = {"corpus": str(folder), "stream": True, "vocabulary_sample_mb": 1}
    settings = {**DEFAULTS, **TINY}
    training_data.load(run, settings, tmp_path, lines.append)
    assert [line for line in lines if "random.txt" in line] == [
        f"Skipped {folder / 'random.txt'} (not UTF-8 at byte 0)"
    ]


def test_the_streamed_split_and_stream_are_the_same_in_every_run(tmp_path):
    folder = _folder(tmp_path)
    settings = {**DEFAULTS, **TINY}
    run = {"corpus": str(folder), "stream": True, "vocabulary_sample_mb": 0.01}
    lines = []
    first = training_data.load(run, settings, tmp_path, lines.append)
    again = training_data.load(run, settings, tmp_path, lambda line: None)
    assert any("streamed (never read whole)" in line for line in lines)
    # Held out: the documents whose hash falls in the held-out share.
    documents = list(corpus.stream_documents(first.files, lambda line: None))
    held_out = [d for d in documents if corpus.held_out_share(d) <= 0.05]
    want = data.sequences(first.tokenizer, held_out, settings["max_length"])
    for got, expected in zip(first.held_out_sequences, want, strict=True):
        np.testing.assert_array_equal(got, expected)
    # The vocabulary comes from the first 10 kB of training text.
    sampled = sum(len(s) for s in first.counted_sequences)
    everything = data.sequences(first.tokenizer, documents, 16)
    assert 0 < sampled < sum(len(s) for s in everything) / 2
    # The stream: the same batches in every run; `start` skips batches.
    one = [b.numpy() for b in first.batches(0, _OneReplica(), 0).take(30)]
    two = [b.numpy() for b in again.batches(0, _OneReplica(), 0).take(30)]
    later = [b.numpy() for b in again.batches(12, _OneReplica(), 0).take(5)]
    for a, b in zip(one + later, two + one[12:17], strict=True):
        np.testing.assert_array_equal(a, b)


class _OneReplica:
    num_replicas_in_sync = 1
