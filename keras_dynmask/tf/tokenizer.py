"""A WordPiece tokenizer built with tensorflow-text, cached on disk.

Example:

>>> from keras_dynmask.tf.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer
>>> tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, "the", "list", "##s"])
>>> tokenizer.encode(["The lists [MASK]"]).tolist()
[[2, 5, 6, 7, 4, 3]]
"""

import hashlib
import os
import pathlib
import time

import numpy as np
import tensorflow as tf
import tensorflow_text as text

from keras_dynmask.core._checks import check_int

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MASK_TOKEN = "[MASK]"


class WordPieceTokenizer:
    """Lower-cased WordPiece (BERT's) over a vocabulary list.

    The special tokens come first: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2,
    `[SEP]` 3, `[MASK]` 4. The text `[MASK]` in an input stays one mask
    token.

    Args:
        vocabulary: list of str, special tokens first.
    """

    def __init__(self, vocabulary):
        vocabulary = list(vocabulary)
        if tuple(vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocabulary must start with {SPECIAL_TOKENS}, received "
                f"vocabulary[:5]={vocabulary[:5]!r}"
            )
        self.vocabulary = vocabulary
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            range(len(SPECIAL_TOKENS))
        )
        self._tokenizer = text.FastBertTokenizer(
            vocabulary,
            token_out_type=tf.int32,
            lower_case_nfd_strip_accents=True,
            unknown_token="[UNK]",
        )

    @property
    def module(self):
        """The tensorflow-text tokenizer, a `tf.Module` a SavedModel tracks."""
        return self._tokenizer

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    @property
    def special_ids(self):
        return list(range(len(SPECIAL_TOKENS)))

    @classmethod
    def build(cls, documents, vocabulary_size, cache_dir=None, log=None):
        """Learns a vocabulary from documents (tensorflow-text's
        `bert_vocab_from_dataset`), or reads it from `cache_dir` when the
        same documents and size were seen before. `log`, if given, hears
        what is happening (learning takes about 30 s for 300,000 words).
        """
        from tensorflow_text.tools.wordpiece_vocab import (
            bert_vocab_from_dataset as learn,
        )

        vocabulary_size = check_int(
            "vocabulary_size", vocabulary_size, minimum=1
        )
        if vocabulary_size <= len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocabulary_size must exceed the {len(SPECIAL_TOKENS)} "
                f"special tokens, received vocabulary_size={vocabulary_size}"
            )
        digest = hashlib.sha256()
        for document in documents:
            digest.update(document.encode("utf-8"))
        key = f"{digest.hexdigest()[:16]}-{vocabulary_size}"
        cached = None
        if cache_dir is not None:
            cached = pathlib.Path(cache_dir) / f"vocabulary-{key}.txt"
            if cached.exists():
                return cls.load(cached)
        words = sum(len(document.split()) for document in documents)
        if log is not None:
            where = f", then cached in {cached.parent}" if cached else ""
            log(
                f"Vocabulary: learning {vocabulary_size} WordPiece tokens "
                f"from {words:,} words (once{where})..."
            )
        started = time.time()
        dataset = tf.data.Dataset.from_tensor_slices(list(documents))
        vocabulary = learn.bert_vocab_from_dataset(
            dataset.batch(1000),
            vocab_size=vocabulary_size,
            reserved_tokens=list(SPECIAL_TOKENS),
            bert_tokenizer_params={"lower_case": True},
        )
        tokenizer = cls(vocabulary)
        if log is not None:
            log(f"Vocabulary: learned in {time.time() - started:.0f} s")
        if cached is not None:
            # Whole or not at all: another process (a second worker) may
            # read the cache at any moment.
            staging = cached.with_name(f".{cached.name}.{os.getpid()}")
            tokenizer.save(staging)
            os.replace(staging, cached)
        return tokenizer

    @classmethod
    def load(cls, path):
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
        return cls(lines)

    def save(self, path):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.vocabulary) + "\n", encoding="utf-8")
        return path

    def tokenize(self, texts):
        """Token ids of each text, a `tf.RaggedTensor` `(N, None)`."""
        return self._tokenizer.tokenize(tf.constant(list(texts)))

    def encode(self, texts, max_length=None):
        """Ids with `[CLS]` and `[SEP]`, as a padded int32 numpy array;
        `[MASK]` in the text becomes the mask id."""
        rows = []
        for item in texts:
            pieces = item.split(MASK_TOKEN)
            ids = [self.cls_id]
            for index, piece in enumerate(pieces):
                if index:
                    ids.append(self.mask_id)
                if piece.strip():
                    ids.extend(self.tokenize([piece])[0].numpy().tolist())
            ids.append(self.sep_id)
            if max_length is not None:
                ids = ids[: max_length - 1] + [self.sep_id]
            rows.append(ids)
        width = max(len(row) for row in rows)
        out = np.full((len(rows), width), self.pad_id, "int32")
        for index, row in enumerate(rows):
            out[index, : len(row)] = row
        return out

    def encode_tensor(self, texts):
        """`encode` as TensorFlow ops, for graphs that take raw text.

        Args:
            texts: tf.string `(B,)`.

        Returns:
            int32 `(B, T)`: `[CLS] ids [SEP]`, padded with `[PAD]` to the
            longest text of the batch.
        """
        pieces = tf.strings.split(texts, sep=MASK_TOKEN)
        tokens = self._tokenizer.tokenize(pieces.flat_values)
        # Every piece but the last of its text is followed by a [MASK].
        starts = pieces.row_starts()
        ends = starts + pieces.row_lengths()
        index = tf.range(tf.shape(pieces.flat_values, out_type=tf.int64)[0])
        is_last = tf.reduce_any(
            tf.equal(index[:, None], ends[None, :] - 1), axis=1
        )
        follow = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(~is_last, tf.int32))], self.mask_id),
            tf.cast(~is_last, tf.int64),
        )
        tokens = tf.concat([tokens, follow], axis=1)
        rows = tf.RaggedTensor.from_row_splits(tokens, pieces.row_splits)
        rows = rows.merge_dims(1, 2)
        batch = rows.nrows()
        cls = tf.fill([batch, 1], self.cls_id)
        sep = tf.fill([batch, 1], self.sep_id)
        rows = tf.concat([cls, rows, sep], axis=1)
        return rows.to_tensor(default_value=self.pad_id)

    def prompt_tensor(self, texts):
        """Prompts for a language model as TensorFlow ops: `[CLS]` and the
        ids of each text, no `[SEP]` (the model is to continue it).

        Args:
            texts: tf.string `(B,)`.

        Returns:
            int32 `(B, T)`, right-padded with `[PAD]`.
        """
        rows = self._tokenizer.tokenize(texts)
        cls = tf.fill([rows.nrows(), 1], self.cls_id)
        return tf.concat([cls, rows], axis=1).to_tensor(self.pad_id)

    def decode_tensor(self, ids):
        """`decode` as TensorFlow ops: readable text of each row of ids.

        Args:
            ids: int `(B, T)`.

        Returns:
            tf.string `(B,)`: the tokens but the special ones (`[MASK]`
            stays), `##` pieces joined to their words.
        """
        ids = tf.convert_to_tensor(ids, tf.int32)
        hidden = [i for i in self.special_ids if i != self.mask_id]
        shown = tf.reduce_all(ids[..., None] != tf.constant(hidden), axis=-1)
        words = tf.gather(tf.constant(self.vocabulary), ids)
        text = tf.strings.reduce_join(
            tf.ragged.boolean_mask(words, shown), axis=1, separator=" "
        )
        return tf.strings.regex_replace(text, " ##", "")

    def decode(self, ids):
        """Readable text of ids, `##` pieces joined to their words."""
        words = []
        for token in (self.vocabulary[i] for i in ids):
            if token in SPECIAL_TOKENS and token != MASK_TOKEN:
                continue
            if token.startswith("##") and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return " ".join(words)
