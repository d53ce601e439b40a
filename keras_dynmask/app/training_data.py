"""What `pretrain` trains on: its corpus read whole, or streamed.

A corpus up to `corpus.STREAM_ABOVE` bytes (and the embedded one) is read
whole: its documents are split by a hash of their text, tokenized once,
and every pass over them is a stateless permutation of the sequences
(`data.training_stream`). A larger corpus, or any with `stream=True`, is
streamed: its files are read a paragraph at a time on every pass, the
vocabulary is learned from a bounded sample of the first documents, the
held-out set is the first `corpus.STREAMED_HELD_OUT` documents whose hash
falls in the held-out share, and passes are shuffled in a buffer
(`data.streamed_training_stream`). Under several workers, a streamed corpus
is sharded by file: each worker reads its own files.
"""

from keras_dynmask.app import corpus
from keras_dynmask.tf import data
from keras_dynmask.tf import distribute
from keras_dynmask.tf.tokenizer import WordPieceTokenizer

HELD_OUT = 0.05


def load(run, settings, cache_dir, log):
    """The training data of a `pretrain` run (its `run` record): `InMemory`
    or `Streamed`."""
    if run["corpus"] is not None and run["stream"]:
        sample_bytes = int(run["vocabulary_sample_mb"] * 2**20)
        return Streamed(run["corpus"], settings, sample_bytes, cache_dir, log)
    return InMemory(run["corpus"], settings, cache_dir, log)


class InMemory:
    """A corpus read whole and tokenized once."""

    # How the replicas of several workers share the batches.
    sharing = "each replica training on its slice of every global batch"

    def __init__(self, corpus_path, settings, cache_dir, log):
        self.settings = settings
        if corpus_path is None:
            documents = corpus.default_corpus()
            source = "the embedded corpus (standard-library docstrings, pydoc)"
        else:
            documents = corpus.read_corpus(corpus_path, log=log)
            source = str(corpus_path)
        training, held_out = corpus.split_documents(documents, HELD_OUT)
        log(
            f"Corpus: {source}: {len(documents)} documents, "
            f"{sum(len(d.split()) for d in documents):,} words "
            f"({len(held_out)} documents held out)"
        )
        self.tokenizer = _vocabulary(training, settings, cache_dir, log)
        length = settings["max_length"]
        self.sequences = data.sequences(self.tokenizer, training, length)
        self.held_out_sequences = data.sequences(
            self.tokenizer, held_out, length
        )
        self.counted_sequences = self.sequences
        self.steps_per_pass = data.batches_per_pass(
            self.sequences, settings["batch_size"]
        )
        log(
            f"Sequences: {len(self.sequences)} for training, "
            f"{len(self.held_out_sequences)} held out, at most {length} "
            "tokens, batches padded to their own longest"
        )

    def check(self, strategy):
        """Nothing to check: every worker reads the whole corpus."""

    def batches(self, start, strategy, pad_id):
        """The training stream from batch `start`, for `strategy`'s
        replicas (each its slice of every global batch)."""
        return distribute.replica_batches(
            lambda: data.training_stream(
                self.sequences,
                self.settings["batch_size"],
                seed=self.settings["seed"],
                start=start,
            ),
            strategy,
            pad_id=pad_id,
        )


class Streamed:
    """A corpus read a paragraph at a time, never whole."""

    sharing = (
        "each worker reading its own files (every N-th), its replicas "
        "taking batches of batch_size / replicas rows in turn"
    )

    def __init__(self, corpus_path, settings, sample_bytes, cache_dir, log):
        self.settings = settings
        self.sample_bytes = sample_bytes
        self.files = []
        for file in corpus.corpus_files(corpus_path):
            reason = corpus.unreadable(file)
            if reason:  # said once, here, not on every pass
                log(f"Skipped {file} ({reason})")
            else:
                self.files.append(file)
        if not self.files:
            raise ValueError(
                f"The corpus holds no UTF-8 text: corpus={str(corpus_path)!r}"
            )
        self.log = log
        size = sum(file.stat().st_size for file in self.files)
        files = f"{len(self.files)} file{'s' * (len(self.files) > 1)}"
        log(
            f"Corpus: {corpus_path}: {_size(size)} in {files}, streamed "
            "(never read whole)"
        )
        sample, held_out = self._sample_and_held_out()
        self.tokenizer = _vocabulary(sample, settings, cache_dir, log)
        length = settings["max_length"]
        self.held_out_sequences = data.sequences(
            self.tokenizer, held_out, length
        )
        self.counted_sequences = data.sequences(self.tokenizer, sample, length)
        self.steps_per_pass = None
        log(
            f"Sequences: streamed for training; {len(held_out)} documents "
            f"held out ({len(self.held_out_sequences)} sequences), at most "
            f"{length} tokens"
        )

    def _sample_and_held_out(self):
        """The first training documents up to `sample_bytes` of text, and
        the first held-out ones, read in one partial pass."""
        sample, held_out, read, said = [], [], 0, 0
        for document in corpus.stream_documents(self.files, self.log):
            if corpus.held_out_share(document) <= HELD_OUT:
                if len(held_out) < corpus.STREAMED_HELD_OUT:
                    held_out.append(document)
            elif read < self.sample_bytes:
                sample.append(document)
                read += len(document.encode("utf-8"))
                if read >= said + 8 * 2**20:
                    said = read
                    self.log(f"Vocabulary sample: {read / 2**20:.0f} MB read")
            if (
                read >= self.sample_bytes
                and len(held_out) >= corpus.STREAMED_HELD_OUT
            ):
                break
        if not sample or not held_out:
            raise ValueError(
                f"The corpus is too small to stream: {len(sample)} training "
                f"and {len(held_out)} held-out documents found; give it "
                "without stream=True (--stream)"
            )
        return sample, held_out

    def _sequences(self, files):
        """The training sequences of one pass over `files`."""
        documents = (
            document
            for document in corpus.stream_documents(files, self.log)
            if corpus.held_out_share(document) > HELD_OUT
        )
        return data.streamed_sequences(
            self.tokenizer, documents, self.settings["max_length"]
        )

    def check(self, strategy):
        """Refuses more workers than files (before any worker waits on
        another)."""
        replicas = strategy.num_replicas_in_sync
        if replicas == 1:
            return
        workers = replicas // len(strategy.extended.worker_devices)
        if workers > len(self.files):
            raise ValueError(
                f"A streamed corpus is sharded by file: {workers} workers "
                f"need at least {workers} files, the corpus has "
                f"{len(self.files)}"
            )

    def batches(self, start, strategy, pad_id):
        """The training stream from global batch `start`: one stream of
        global batches, or, under several workers, each worker's stream of
        its own files in fixed-size batches for its replicas."""
        settings = self.settings
        replicas = strategy.num_replicas_in_sync
        if replicas == 1:
            return data.streamed_training_stream(
                lambda: self._sequences(self.files),
                settings["batch_size"],
                seed=settings["seed"],
                max_length=settings["max_length"],
                pad_id=pad_id,
                start=start,
            )

        def for_worker(worker, workers):
            files = self.files[worker::workers]
            local = replicas // workers
            return data.streamed_training_stream(
                lambda: self._sequences(files),
                -(-settings["batch_size"] // replicas),
                seed=settings["seed"] + worker,
                max_length=settings["max_length"],
                pad_id=pad_id,
                start=start * local,
                fixed_length=True,
            )

        return distribute.worker_batches(for_worker, strategy)


def _size(size):
    """`size` bytes in words: kB below a MB, else MB."""
    if size < 2**20:
        return f"{size / 2**10:,.0f} kB"
    return f"{size / 2**20:,.0f} MB"


def _vocabulary(documents, settings, cache_dir, log):
    tokenizer = WordPieceTokenizer.build(
        documents, settings["vocabulary_size"], cache_dir=cache_dir, log=log
    )
    log(f"Vocabulary: {tokenizer.vocabulary_size} WordPiece tokens")
    return tokenizer
