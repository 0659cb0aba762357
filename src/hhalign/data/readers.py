"""Reading preference data: local files (.jsonl[.gz] .json[.gz] .parquet .csv[.gz]), HH-RLHF's
``<subset>/<split>`` tree, or a hub dataset; every row comes back as a ``RawRow`` with where it came from.

    rows = read_file(Path("prefs.jsonl"), "prefs.jsonl")
    rows = read_rows("../shared/data/hh-rlhf", "harmless-base", "test")      # None when the subset is absent
    data_layout(cfg.data)                                                    # "subsets" or "single"

Rows that cannot be decoded are kept, with their skip reason in ``error``, so the data report can list them.
Line numbers are 1-based: the file line for .jsonl, .json (where the row's object starts) and .csv (the header
is line 1, so the first data row is line 2); the row number for .parquet and hub data.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhalign.config.schema import DataSection
from hhalign.data.hh import HH_HUB_ID
from hhalign.data.sources import is_local_data
from hhalign.errors import DataError

# Readable file types, by how the name ends (checked in this order).
SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet", ".csv.gz", ".csv")


@dataclass
class RawRow:
    subset: str  # the subset/split or file the row came from
    line: int  # 1-based line number in the file (row number for parquet and hub data; see the module docstring)
    data: dict[str, Any] | None = None
    error: str | None = None  # a skip reason when the row could not even be decoded


# ----------------------------------------------------------------------------- files


def data_suffix(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def data_files(folder: Path) -> list[Path]:
    """The readable data files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and data_suffix(p))


def read_file(path: Path, label: str) -> list[RawRow]:
    """Every row of a local data file; rows that cannot be decoded carry their skip reason in ``error``."""
    suffix = data_suffix(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if suffix is None:
        raise DataError(f"'{path}': unsupported file type; hhalign reads {', '.join(SUFFIXES)}")
    if suffix.startswith(".jsonl"):
        return read_jsonl(path, label)
    if suffix == ".parquet":
        return _read_parquet(path, label)
    text = _decode(gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes())
    if suffix.startswith(".csv"):
        return _read_csv(text, path, label)
    if not text.lstrip().startswith("["):
        return read_jsonl(path, label)  # JSON Lines saved as .json
    return _read_json_list(text, path, label)


def read_jsonl(path: Path, label: str) -> list[RawRow]:
    """JSON Lines, one object per line; blank lines are ignored, bad lines kept as errors."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                rows.append(RawRow(label, i, error="not_utf8"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                rows.append(RawRow(label, i, error="invalid_json"))
                continue
            rows.append(RawRow(label, i, data=obj if isinstance(obj, dict) else None, error=None if isinstance(obj, dict) else "invalid_json"))
    return rows


def _decode(raw: bytes) -> str:
    """UTF-8 text; undecodable bytes become lone surrogates, so the rows holding them can be skipped alone."""
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_bad_bytes(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False


def _row(label: str, line: int, obj: Any) -> RawRow:
    if not isinstance(obj, dict):
        return RawRow(label, line, error="invalid_json")
    if _has_bad_bytes(obj):
        return RawRow(label, line, error="not_utf8")
    return RawRow(label, line, data=obj)


def _read_json_list(text: str, path: Path, label: str) -> list[RawRow]:
    """A JSON list of row objects; each row's line is where its object starts."""
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    i, line, counted = text.index("[") + 1, 1, 0
    try:
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text) or text[i] == "]":
                break
            line, counted = line + text.count("\n", counted, i), i
            obj, i = decoder.raw_decode(text, i)
            rows.append(_row(label, line, obj))
    except json.JSONDecodeError as e:
        raise DataError(f"'{path}' is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}. A JSON list is read "
                        "whole, so one broken row stops it; in JSON Lines (.jsonl) a broken line is skipped and reported.") from e
    return rows


def _read_csv(text: str, path: Path, label: str) -> list[RawRow]:
    """A CSV file with a header row; cells are strings, a row's line is the file line where it starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows, end = [], reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if any(cell.strip() for cell in record):
                rows.append(_row(label, start, dict(zip(header or [], record))))
    except csv.Error as e:
        raise DataError(f"'{path}' is not a readable CSV file (line {reader.line_num}): {e}") from e
    return rows


def _read_parquet(path: Path, label: str) -> list[RawRow]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"reading '{path}' needs pyarrow: pip install pyarrow") from e
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # ArrowInvalid on a damaged file
        raise DataError(f"'{path}' is not a readable Parquet file: {type(e).__name__}: {e}") from e
    return [_row(label, i, r) for i, r in enumerate(table.to_pylist(), start=1)]


def read_hub(source: str, split: str, label: str, data_dir: str | None = None) -> list[RawRow]:
    """Every row of one split of a hub dataset (row numbers as lines); ``data_dir`` picks a subset (HH-RLHF's).
    The hub itself was checked before the run started (``hhalign.data.sources``); what fails here is the dataset."""
    import datasets

    subset = {"data_dir": data_dir} if data_dir else {}
    try:
        ds = datasets.load_dataset(source, split=split, **subset)
    except (datasets.exceptions.DatasetsError, OSError, ConnectionError, ValueError) as e:  # missing repo, split, files
        where = f"data_dir={data_dir}, split={split}" if data_dir else f"split={split}"
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not load '{source}' ({where}) from the Hugging Face hub: {type(e).__name__}: {first}. "
                        f"Check the id, data_dir and split, or download it (`hf download {source} --repo-type dataset "
                        "--local-dir DIR`) and pass DIR as data.source (--data-dir DIR).") from e
    return [_row(label, i + 1, dict(r)) for i, r in enumerate(ds)]


# ----------------------------------------------------------------------------- sources


def subset_file(source: str, subset: str, split: str) -> Path | None:
    base = Path(source).expanduser() / subset
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (base / name).is_file():
            return base / name
    return None


def read_rows(source: str, subset: str, split: str) -> list[RawRow] | None:
    """Rows of one subset/split, from a local tree or the hub; None when a local subset is absent."""
    if is_local_data(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory '{source}' does not exist. Pass --data-dir pointing at a folder laid out as "
                            "<subset>/<split>.jsonl[.gz], e.g. ../shared/data/hh-rlhf")
        path = subset_file(source, subset, split)
        return None if path is None else read_jsonl(path, subset)
    return read_hub(source, split, subset, data_dir=subset)


def data_layout(d: DataSection) -> str:
    """'subsets' (HH-RLHF's <subset>/<split> tree) or 'single' (one dataset); see DataSection.layout."""
    if d.layout != "auto":
        return d.layout
    if not is_local_data(d.source):
        return "subsets" if d.source.lower() == HH_HUB_ID.lower() else "single"
    p = Path(d.source).expanduser()
    if p.is_file() or (not p.exists() and data_suffix(p)):
        return "single"
    subsets = {*d.train_subsets, d.harmful_subset, d.helpful_subset}
    if p.is_dir() and not any((p / s).is_dir() for s in subsets) and data_files(p):
        return "single"
    return "subsets"


def single_files(d: DataSection) -> list[tuple[str, Path]] | None:
    """(label, path) of each local file of a single-layout source; None for a hub dataset."""
    if not is_local_data(d.source):
        return None
    p = Path(d.source).expanduser()
    if p.is_file():
        return [(p.name, p)]
    if p.is_dir():
        files = data_files(p)
        if not files:
            raise DataError(f"folder '{d.source}' holds no data files ({', '.join(SUFFIXES)})")
        return [(f.name, f) for f in files]
    raise DataError(f"data source '{d.source}' does not exist: pass a preference file ({', '.join(SUFFIXES)}), "
                    "a folder of them, a folder laid out as <subset>/<split>.jsonl[.gz], or a hub dataset id")


def read_single(d: DataSection, split: str) -> list[tuple[str, list[RawRow], bool]]:
    """(label, rows, is_csv) for each file of a single-layout source (the hub split's rows for a hub id)."""
    files = single_files(d)
    if files is None:
        label = f"{d.source}:{split}"
        return [(label, read_hub(d.source, split, label), False)]
    return [(label, read_file(path, label), data_suffix(path).startswith(".csv")) for label, path in files]
