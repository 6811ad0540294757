"""Reading text: UTF-8 files, gzipped files, folders of files, and the embedded default corpus."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ..errors import RnnkitError

__all__ = ["read_text", "default_corpus", "DEFAULT_CORPUS_NAME"]

DEFAULT_CORPUS_NAME = "pydoc_data.topics"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise RnnkitError(f"{path}: cannot read it ({err})") from None


def _decode(raw: bytes, path: Path) -> str:
    # A NUL byte never occurs in text; checking for it first names the real problem for binaries
    # that happen to decode (e.g. a model file), rather than a confusing byte offset.
    if b"\x00" in raw[:65536]:
        raise RnnkitError(f"{path}: looks like a binary file (it contains NUL bytes); expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RnnkitError(
            f"{path}: not valid UTF-8 (bad byte at offset {err.start}); convert it to UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the text


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a file (``.gz`` is decompressed) or of every file in a folder.

    A folder's files (recursively, hidden ones skipped) are read in sorted order and joined
    with a newline. Raises :class:`RnnkitError` for a missing, empty, binary or non-UTF-8 input.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise RnnkitError(f"{path}: the folder holds no files; expected UTF-8 text files")
        text = "\n".join(_decode(_read_bytes(p), p) for p in files)
    elif path.exists():
        text = _decode(_read_bytes(path), path)
    else:
        raise RnnkitError(f"{path}: no such file or folder")
    if not text.strip():
        raise RnnkitError(f"{path}: the text is empty; expected a UTF-8 file with some text in it")
    return text


def default_corpus() -> str:
    """The embedded default corpus: the English reference text shipped with CPython (``pydoc_data``).

    About 0.43 M characters of prose and code from the Python language reference (what ``help()``
    shows for keywords and topics), with no download. Its exact content follows the Python version.
    ASCII tables, heading underlines and runs of spaces inside lines are dropped: they are a tenth
    of the raw text, and a small model spends its capacity on (and then samples) long blank runs.
    """
    from pydoc_data.topics import topics

    lines = []
    # Sorted keys so the corpus (and hence a seeded run) does not depend on dict order.
    for key in sorted(topics):
        for line in topics[key].strip("\n").split("\n"):
            body = line.strip()
            if body.startswith(("|", "+")) or (body and set(body) <= set("*=-^~")):
                continue  # a table row or border, or a heading's underline
            indent = line[: len(line) - len(line.lstrip(" "))]
            lines.append(indent + re.sub(" {2,}", " ", body))
        lines.append("")
    return re.sub("\n{3,}", "\n\n", "\n".join(lines))
