"""Reading rows of a data source through Hugging Face ``datasets``.

Every reader gets its rows from :func:`iter_rows`, which accepts a local file, a local directory
(every supported file in it, in name order) or a hub dataset name, and yields :class:`Row` objects
that know where they came from, so an error can name the file and the line or row.

How each local format is read (all through ``datasets.load_dataset``, never a loading script):

- ``.jsonl`` / ``.ndjson``: the ``text`` builder (one row per line, blank lines kept so the row
  number is the line number), then each line is parsed here; a malformed line becomes a bad row
  naming its line instead of failing the whole file.
- ``.json``: the ``json`` builder (a JSON array, or JSON Lines under a ``.json`` name; ``field``
  picks a list inside an object). If the file is not valid JSON the stdlib parser is run once to
  name the line and column of the fault.
- ``.parquet`` / ``.arrow``: the ``parquet`` / ``arrow`` builders.
- ``.csv``: the ``csv`` builder with every column read as a string and no NA conversion (an answer
  ``"None"`` or ``"18"`` stays the string it was).
- ``.tsv``: the ``text`` builder, each line split on tabs with no quoting (``csv.QUOTE_NONE``), as
  the FLAN CoT files need; the caller names the columns.

A top-level ``null`` field is removed from the row (Arrow gives a key that one row lacks the
value null in every other row, so null and absent cannot be told apart and are treated alike).

Locations: ``line N`` is 1-based (as an editor shows it), ``row N`` is the 0-based index that
``dataset[N]`` would return.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import DataError

LINE_FORMATS = (".jsonl", ".ndjson")
SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".arrow", ".csv", ".tsv")


def _present(record: Any) -> Any:
    """Drop top-level null fields: Arrow fills a key missing from one row with null, so null = absent."""
    if isinstance(record, dict):
        return {k: v for k, v in record.items() if v is not None}
    return record


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from.

    ``data`` is the parsed record (usually a dict, a list for header-less TSV lines) or ``None``
    when ``error`` says why the raw row could not be parsed.
    """

    origin: str
    index: int
    location: str
    data: Any
    error: str | None = None

    @property
    def where(self) -> str:
        """``FILE:line N`` or ``FILE: row N``: what an error message names."""
        return f"{self.origin}:{self.location}" if self.location.startswith("line") else f"{self.origin}: {self.location}"


def _quiet_datasets() -> None:
    """Keep ``datasets``' progress bars and info logs out of CLI output and test logs."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.ERROR)


def local_files(path: Path) -> list[Path]:
    """The supported files of a local path: the file itself, or a directory's files in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise DataError(f"{path}: directory holds no data file ({', '.join(SUPPORTED_SUFFIXES)})")
        return files
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    return [path]


def is_local(location: str) -> bool:
    """A location is local when it exists on disk or looks like a path rather than ``owner/name``."""
    path = Path(location).expanduser()
    if path.exists():
        return True
    return location.startswith((".", "/", "~")) or path.suffix.lower() in SUPPORTED_SUFFIXES


def _load(builder: str, file: Path, **kwargs: Any):
    import datasets

    _quiet_datasets()
    return datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)


def _json_fault(file: Path) -> str:
    """The stdlib parser's account of why ``file`` is not valid JSON (line and column)."""
    text = file.read_text(encoding="utf-8")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno} column {exc.colno}: malformed JSON: {exc.msg}"
    return "could not be read as JSON"


def _iter_jsonl(file: Path) -> Iterator[Row]:
    for index, line in enumerate(_load("text", file)["text"]):
        if not line.strip():
            continue  # blank lines are layout, not records
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Row(str(file), index, f"line {index + 1}", None, f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        yield Row(str(file), index, f"line {index + 1}", _present(data))


def _iter_json(file: Path, field: str | None) -> Iterator[Row]:
    try:
        dataset = _load("json", file, field=field) if field else _load("json", file)
    except Exception as exc:  # datasets wraps parser errors in several types; diagnose with the stdlib
        fault = _json_fault(file)
        raise DataError(f"{file}: {fault}") from exc
    for index, record in enumerate(dataset):
        yield Row(str(file), index, f"row {index}", _present(record))


def _iter_csv(file: Path) -> Iterator[Row]:
    import datasets

    with file.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataError(f"{file}: empty CSV file (a header row is required)")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        dataset = _load("csv", file, features=features, keep_default_na=False, na_filter=False)
    except Exception as exc:
        raise DataError(f"{file}: malformed CSV: {exc}") from exc
    for index, record in enumerate(dataset):
        yield Row(str(file), index, f"line {index + 2}", _present(record))


def _iter_tsv(file: Path, columns: Sequence[str] | None) -> Iterator[Row]:
    for index, line in enumerate(_load("text", file)["text"]):
        if not line.strip():
            continue
        fields = line.split("\t")
        location = f"line {index + 1}"
        if columns is not None and len(fields) != len(columns):
            yield Row(str(file), index, location, None, f"expected {len(columns)} tab-separated fields ({', '.join(columns)}), found {len(fields)}")
            continue
        yield Row(str(file), index, location, dict(zip(columns, fields, strict=True)) if columns else fields)


def iter_file_rows(file: Path, *, field: str | None = None, tsv_columns: Sequence[str] | None = None) -> Iterator[Row]:
    """Rows of one local file, by its suffix (see the module docstring)."""
    suffix = file.suffix.lower()
    if suffix in LINE_FORMATS:
        yield from _iter_jsonl(file)
    elif suffix == ".json":
        yield from _iter_json(file, field)
    elif suffix == ".csv":
        yield from _iter_csv(file)
    elif suffix == ".tsv":
        yield from _iter_tsv(file, tsv_columns)
    else:
        builder = "parquet" if suffix == ".parquet" else "arrow"
        try:
            dataset = _load(builder, file)
        except Exception as exc:
            raise DataError(f"{file}: unreadable {builder} file: {exc}") from exc
        for index, record in enumerate(dataset):
            yield Row(str(file), index, f"row {index}", _present(record))


def iter_hub_rows(name: str, *, split: str = "train", config: str | None = None, data_files: str | None = None,
                  streaming: bool = False, revision: str | None = None) -> Iterator[Row]:
    """Rows of a hub dataset (parquet/json data files; loading scripts are refused by ``datasets``)."""
    import datasets

    _quiet_datasets()
    kwargs: dict[str, Any] = {"split": split, "streaming": streaming}
    if config:
        kwargs["name"] = config
    if data_files:
        kwargs["data_files"] = data_files
    if revision:
        kwargs["revision"] = revision
    try:
        dataset = datasets.load_dataset(name, **kwargs)
    except Exception as exc:
        raise DataError(f"{name}: cannot load hub dataset (split {split!r}): {type(exc).__name__}: {exc}") from exc
    origin = f"{name}[{split}]"
    for index, record in enumerate(dataset):
        yield Row(origin, index, f"row {index}", _present(record))


def iter_rows(location: str, *, split: str = "train", config: str | None = None, data_files: str | None = None,
              streaming: bool = False, revision: str | None = None, field: str | None = None,
              tsv_columns: Sequence[str] | None = None) -> Iterator[Row]:
    """Rows of a local file or directory, or of a hub dataset named ``owner/name``."""
    if is_local(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise DataError(f"{location}: no such file or directory")
        for file in local_files(path):
            yield from iter_file_rows(file, field=field, tsv_columns=tsv_columns)
    else:
        yield from iter_hub_rows(location, split=split, config=config, data_files=data_files,
                                 streaming=streaming, revision=revision)
