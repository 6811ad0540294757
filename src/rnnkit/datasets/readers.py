"""Readers for the task data: labelled text or numeric sequences, parallel text, time series.

Every reader fails with a :class:`DataError` whose message is one line naming the file, the place
and what was expected, so the CLI can print it as it is.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RnnkitError

__all__ = [
    "DataError",
    "LabelledTexts",
    "LabelledSeries",
    "Series",
    "read_text_lines",
    "read_classification",
    "read_ts",
    "read_parallel",
    "read_pairs",
    "read_series",
]


class DataError(RnnkitError):
    """Bad input data; the message is one line saying what is wrong and where (the CLI prints it)."""


@dataclass
class LabelledTexts:
    """Texts with one label each."""

    texts: list[str]
    labels: list[str]
    kind: str = field(default="text", init=False)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class LabelledSeries:
    """Numeric sequences, each ``(T_i, I)`` float32, with one label each."""

    series: list[np.ndarray]
    labels: list[str]
    kind: str = field(default="series", init=False)

    def __len__(self) -> int:
        return len(self.series)


@dataclass
class Series:
    """One time series: ``target`` ``(N,)``, ``covariates`` ``(N, C)``, optional time stamps."""

    target: np.ndarray
    covariates: np.ndarray
    target_name: str
    covariate_names: list[str]
    stamps: list[str] | None = None


def _open_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start} cannot be decoded)") from None


def read_text_lines(path: str | Path, *, keep_empty: bool = False) -> list[str]:
    """The stripped lines of a UTF-8 text file (``.gz`` decompressed); split on ``\\n`` only."""
    text = _open_text(Path(path))
    lines = [line.strip() for line in text.split("\n")]
    if text.endswith("\n"):
        lines.pop()
    return lines if keep_empty else [line for line in lines if line]


# --- classification --------------------------------------------------------------------------


def read_classification(
    path: str | Path, *, text_col: str | None = None, label_col: str | None = None
) -> LabelledTexts | LabelledSeries:
    """Labelled examples from any supported layout, chosen by what ``path`` is.

    - a folder: one file per class (file name without suffix = label, one example per line), or
      one subfolder per class (one example per file)
    - ``.ts``: the UCR/UEA format (numeric sequences)
    - ``.csv`` / ``.tsv``: a header row; text with ``label_col`` and ``text_col`` (defaults
      ``label`` and ``text``), or, when no text column is named or present, numeric sequences:
      every column but the label is one time step
    - anything else: one ``label<TAB>text`` line per example
    """
    p = Path(path)
    if p.is_dir():
        data: LabelledTexts | LabelledSeries = _read_class_folder(p)
    elif p.suffix.lower() == ".ts":
        data = read_ts(p)
    elif p.suffix.lower() in (".csv", ".tsv") or p.name.lower().endswith((".csv.gz", ".tsv.gz")):
        data = _read_table(p, text_col, label_col)
    else:
        data = _read_label_tab(p)
    if len(data) == 0:
        raise DataError(f"{p}: no examples found")
    return data


def _class_names(files: list[Path]) -> list[str]:
    """Labels from file names: ``.gz``/``.txt`` dropped, then a shared prefix ending in ``.``/``_``/``-``
    (``rt-polarity.pos``, ``rt-polarity.neg`` -> ``pos``, ``neg``)."""
    names = []
    for f in files:
        name = f.name
        for suffix in (".gz", ".txt"):
            name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        names.append(name)
    if len(names) > 1:
        prefix = names[0]
        for name in names[1:]:
            while not name.startswith(prefix):
                prefix = prefix[:-1]
        cut = max(prefix.rfind(c) for c in "._-") + 1
        if cut and all(len(n) > cut for n in names):
            names = [n[cut:] for n in names]
    return names


def _read_class_folder(folder: Path) -> LabelledTexts:
    # documentation beside the data (SOURCE.md, README, LICENSE) is not a class
    entries = sorted(
        e
        for e in folder.iterdir()
        if not e.name.startswith(".")
        and e.suffix.lower() != ".md"
        and e.stem.upper() not in ("README", "LICENSE")
    )
    if not entries:
        raise DataError(f"{folder}: empty folder, expected one file or subfolder per class")
    files = [e for e in entries if not e.is_dir()]
    names = dict(zip(files, _class_names(files)))
    texts, labels = [], []
    for entry in entries:
        if entry.is_dir():
            label = entry.name
            examples = [_open_text(f).strip() for f in sorted(entry.iterdir()) if f.is_file()]
            examples = [e for e in examples if e]
        else:
            label = names[entry]
            examples = read_text_lines(entry)
        if not examples:
            raise DataError(f"{entry}: class {label!r} has no examples (empty class)")
        texts += examples
        labels += [label] * len(examples)
    return LabelledTexts(texts, labels)


def _read_label_tab(path: Path) -> LabelledTexts:
    texts, labels = [], []
    for n, line in enumerate(_open_text(path).split("\n"), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{path}: line {n}: expected 'label<TAB>text', found no tab")
        label, text = line.split("\t", 1)
        if not label.strip() or not text.strip():
            raise DataError(f"{path}: line {n}: empty label or text")
        labels.append(label.strip())
        texts.append(text.strip())
    return LabelledTexts(texts, labels)


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    text = _open_text(path)
    delimiter = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty file, expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {n} has {len(row)} fields, the header has {len(header)}")
    return header, rows[1:]


def _column(path: Path, header: list[str], name: str, flag: str) -> int:
    if name not in header:
        raise DataError(f"{path}: unknown column {name!r} ({flag}); columns are: {', '.join(header)}")
    return header.index(name)


def _read_table(path: Path, text_col: str | None, label_col: str | None) -> LabelledTexts | LabelledSeries:
    header, rows = _read_csv_rows(path)
    li = _column(path, header, label_col or "label", "--label-col")
    labels = [r[li].strip() for r in rows]
    for n, label in enumerate(labels, 2):
        if not label:
            raise DataError(f"{path}: row {n}: empty label")
    if text_col is not None or "text" in header:
        ti = _column(path, header, text_col or "text", "--text-col")
        return LabelledTexts([r[ti].strip() for r in rows], labels)
    series = []
    for n, row in enumerate(rows, 2):
        values = [_number(path, n, header[j], c) for j, c in enumerate(row) if j != li and c.strip() != ""]
        series.append(np.asarray(values, dtype=np.float32).reshape(-1, 1))  # (T, 1)
    return LabelledSeries(series, labels)


def _number(path: Path, row: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{path}: row {row}, column {column!r}: {cell.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}, column {column!r}: {cell.strip()!r} is not a finite number")
    return value


def read_ts(path: str | Path) -> LabelledSeries:
    """A UCR/UEA ``.ts`` file: ``@`` header tags, ``@data``, then ``v,v,..[:v,v,..]:label`` lines.

    Dimensions (multivariate series) are separated by ``:``; the last field is the class label.
    """
    p = Path(path)
    lines = _open_text(p).split("\n")
    tags: dict[str, str] = {}
    start = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise DataError(
                f"{p}: line {n}: malformed .ts header, expected '@tag value' or '#comment' before @data"
            )
        tag, _, value = line[1:].partition(" ")
        tags[tag.lower()] = value.strip()
        if tag.lower() == "data":
            start = n
            break
    if start is None:
        raise DataError(f"{p}: malformed .ts header: no @data line")
    class_label = tags.get("classlabel", "")
    if not class_label.lower().startswith("true"):
        raise DataError(
            f"{p}: malformed .ts header: expected '@classLabel true <labels...>', got {class_label!r}"
        )
    allowed = set(class_label.split()[1:])
    expected_length = tags.get("serieslength")
    series, labels = [], []
    for n, raw in enumerate(lines[start:], start + 1):
        line = raw.strip()
        if not line:
            continue
        *dims, label = line.split(":")
        label = label.strip()
        if not dims:
            raise DataError(f"{p}: line {n}: expected 'values:label'")
        if allowed and label not in allowed:
            raise DataError(
                f"{p}: line {n}: label {label!r} is not declared in @classLabel ({' '.join(sorted(allowed))})"
            )
        columns = []
        for d, dim in enumerate(dims):
            values = []
            for cell in dim.split(","):
                if cell.strip() == "?":
                    raise DataError(f"{p}: line {n}: missing value '?' (not supported)")
                try:
                    values.append(float(cell))
                except ValueError:
                    raise DataError(
                        f"{p}: line {n}, dimension {d + 1}: {cell.strip()!r} is not a number"
                    ) from None
            columns.append(values)
        if len({len(c) for c in columns}) != 1:
            raise DataError(f"{p}: line {n}: dimensions have different lengths")
        if (
            expected_length
            and tags.get("equallength", "").lower() == "true"
            and len(columns[0]) != int(expected_length)
        ):
            raise DataError(f"{p}: line {n}: {len(columns[0])} values, @seriesLength says {expected_length}")
        series.append(np.asarray(columns, dtype=np.float32).T.copy())  # (I, T) -> (T, I)
        labels.append(label)
    return LabelledSeries(series, labels)


# --- parallel text ---------------------------------------------------------------------------


def read_parallel(source: str | Path, target: str | Path) -> tuple[list[str], list[str]]:
    """Line-aligned source and target files (``.gz`` allowed); line counts must match."""
    src = read_text_lines(source, keep_empty=True)
    tgt = read_text_lines(target, keep_empty=True)
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files differ in line count: {source} has {len(src)}, {target} has {len(tgt)}"
        )
    pairs = [(s, t) for s, t in zip(src, tgt) if s and t]
    if not pairs:
        raise DataError(f"{source}: no non-empty sentence pairs")
    return [s for s, _ in pairs], [t for _, t in pairs]


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """``source<TAB>target`` lines (``.gz`` allowed)."""
    src, tgt = [], []
    for n, line in enumerate(read_text_lines(path, keep_empty=True), 1):
        if not line:
            continue
        if "\t" not in line:
            raise DataError(f"{path}: line {n}: expected 'source<TAB>target', found no tab")
        s, t = line.split("\t", 1)
        if not s.strip() or not t.strip():
            raise DataError(f"{path}: line {n}: empty source or target")
        src.append(s.strip())
        tgt.append(t.strip())
    if not src:
        raise DataError(f"{path}: no sentence pairs")
    return src, tgt


# --- time series -----------------------------------------------------------------------------


def read_series(
    path: str | Path, target_col: str | None = None, covariates: list[str] | None = None
) -> Series:
    """A time series from a CSV with a header; ``target_col`` defaults to the last column.

    A first column that is not numeric (dates) is kept as time stamps.
    """
    p = Path(path)
    header, rows = _read_csv_rows(p)
    if not rows:
        raise DataError(f"{p}: no data rows")
    target = target_col or header[-1]
    ti = _column(p, header, target, "--target-col")
    ci = [_column(p, header, c, "--covariates") for c in (covariates or [])]
    y = np.array([_number(p, n, target, r[ti]) for n, r in enumerate(rows, 2)], dtype=np.float64)
    cov = np.array(
        [[_number(p, n, header[j], r[j]) for j in ci] for n, r in enumerate(rows, 2)], dtype=np.float64
    ).reshape(len(rows), len(ci))
    stamps = None
    if ti != 0 and 0 not in ci:
        stamps = [r[0] for r in rows]
    return Series(y, cov, target, list(covariates or []), stamps)
