"""Text to pretrain on: the embedded default corpus, or the user's files.

The default corpus ships with every Python installation: the docstrings of
the standard library's modules, classes and functions (read from source
with `ast`, never imported) and the help topics of `pydoc_data.topics`,
about 330,000 words, always in the same order.
"""

import ast
import hashlib
import pathlib
import sysconfig

# Folders of the standard library that hold tests or vendored code.
_SKIPPED_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3"}
_MIN_WORDS = 8


def default_corpus():
    """Documents of the embedded corpus, in a fixed order.

    Returns:
        list of str.
    """
    from pydoc_data import topics

    documents = [text for _, text in stdlib_docstrings()]
    documents.extend(topics.topics[name] for name in sorted(topics.topics))
    return documents


def stdlib_docstrings():
    """The standard library's docstrings with the module each is from.

    The embedded corpus less the help topics, in the same order; a
    labelled corpus for downstream tasks (which package a paragraph is
    from).

    Returns:
        list of `(module, docstring)` pairs, `module` dotted
        (`"email.mime.text"`; a package's `__init__` is the package).
    """
    pairs = []
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIPPED_PARTS or p.startswith("test") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        names = [*parts[:-1], path.stem]
        if names[-1] == "__init__":
            names.pop()
        module = ".".join(names)
        pairs.extend((module, text) for text in _docstrings(tree))
    return pairs


def _docstrings(tree):
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            text = ast.get_docstring(node)
            if text and len(text.split()) >= _MIN_WORDS:
                yield text


def read_corpus(path, log=print):
    """Documents from a `.txt` file or a folder of them (searched
    recursively, in sorted order); blank lines separate documents.

    Files that are not UTF-8 text (binary data, another encoding) are
    skipped, each named through `log`, rather than read as replacement
    characters that would become vocabulary.

    Raises:
        ValueError: when the path does not exist or holds no text.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"corpus path does not exist: corpus={str(path)!r}")
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    documents, skipped = [], []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            skipped.append(f"{file} (not UTF-8 at byte {error.start})")
            continue
        if "\x00" in text:
            skipped.append(f"{file} (binary: it holds NUL bytes)")
            continue
        documents.extend(
            block.strip() for block in text.split("\n\n") if block.strip()
        )
    for line in skipped:
        log(f"Skipped {line}")
    if not documents:
        where = "file" if path.is_file() else "folder (no .txt files with text)"
        raise ValueError(
            f"The corpus {where} holds no UTF-8 text: corpus={str(path)!r}"
        )
    return documents


def split_documents(documents, held_out_fraction=0.05):
    """Splits documents into (training, held-out) by a hash of their text,
    so the split does not depend on their order.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(
            "held_out_fraction must be in (0, 1), received "
            f"held_out_fraction={held_out_fraction!r}"
        )
    if len(documents) < 2:
        raise ValueError(
            f"The corpus is too small: {len(documents)} document. It needs "
            "at least 2 documents (paragraphs separated by blank lines), "
            "one to train on and one held out; a useful model needs "
            "thousands of sentences"
        )
    shares = [held_out_share(d) for d in documents]
    # A small corpus whose hashes all fall above the fraction still holds
    # out one document: the one with the smallest hash.
    threshold = max(held_out_fraction, min(shares))
    training, held_out = [], []
    for document, share in zip(documents, shares, strict=True):
        (held_out if share <= threshold else training).append(document)
    if not training:  # every document had the same text
        training, held_out = held_out[1:], held_out[:1]
    return training, held_out


# A corpus over this many bytes is streamed rather than read whole.
STREAM_ABOVE = 256 * 2**20
# Held-out documents of a streamed corpus: the first ones, in file order.
STREAMED_HELD_OUT = 2000


def corpus_files(path):
    """The `.txt` files of a corpus path (a file, or a folder searched
    recursively), in sorted order."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"corpus path does not exist: corpus={str(path)!r}")
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    if not files:
        raise ValueError(
            f"The corpus folder holds no .txt files: corpus={str(path)!r}"
        )
    return files


def corpus_bytes(path):
    """The size of a corpus path's `.txt` files, in bytes."""
    return sum(file.stat().st_size for file in corpus_files(path))


def stream_documents(files, log=print):
    """Documents of `files`, one at a time, never a whole file in memory:
    paragraphs separated by blank lines, as `read_corpus` reads them.

    A file that is not UTF-8 text is skipped (named through `log`); one
    that stops being UTF-8 part-way is read up to there.
    """
    for file in files:
        reason = unreadable(file)
        if reason:
            log(f"Skipped {file} ({reason})")
            continue
        lines = []
        try:
            with open(file, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        lines.append(line)
                    elif lines:
                        yield "".join(lines).strip()
                        lines = []
        except UnicodeDecodeError as error:
            log(f"Read {file} up to byte {error.start}: not UTF-8 after it")
        if lines:
            yield "".join(lines).strip()


def unreadable(file):
    """Why `file` is not UTF-8 text, judged from its first 64 kB, or `None`
    when it reads as text."""
    with open(file, "rb") as handle:
        head = handle.read(65536)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.end < len(head) - 3:  # not a character cut in two
            return f"not UTF-8 at byte {error.start}"
    if b"\x00" in head:
        return "binary: it holds NUL bytes"
    return None


def held_out_share(document):
    """Where `document` falls in [0, 1): a hash of its text, so that the
    held-out split does not depend on the order of the documents."""
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32
