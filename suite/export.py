"""`overfit export`: a study's runs, curves and summary (`suite.results`) as files, one each.

Formats:

- `csv`: `runs.csv`, `curves.csv`, `summary.csv`; a list-valued setting (`model.hidden`) is
  JSON text (`json.loads` gives the list back) and times are ISO 8601; read back with
  `pandas.read_csv(path)`, every float to the bit;
- `parquet` (pyarrow): `*.parquet`, every column typed as in the frames (a list comes back from
  `pandas.read_parquet` as a NumPy array: `.tolist()` gives the list);
- `json`: `*.json`, records (a list of objects, one per row), lists as arrays, times ISO 8601,
  a missing value `null`, floats written to the bit (Python's `json` reads them so:
  `pandas.DataFrame(json.loads(path.read_text()))`; `pandas.read_json` may differ by 1 ulp).

The frames are read before anything is written, and the files are written into a temporary
folder beside `out` and moved into place at the end: an unknown study or metric, or a folder
that cannot be written, leaves nothing half-written.

Owns: the formats and the files' names. Must not: read the store itself (`suite.results`
does) or decide a column's content.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

FORMATS = ("csv", "parquet", "json")
FRAMES = ("runs", "curves", "summary")


class ExportError(ValueError):
    """An export that cannot be made; the message is one line."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def default_folder(studies: list[str]) -> Path:
    """`reports/<study>/data`, or `reports/<a+b>/data` for several studies."""
    return Path("reports") / "+".join(studies) / "data"


def export(
    studies: list[str], fmt: str = "csv", out: Path | None = None, uri: str | None = None
) -> list[Path]:
    """Write the three frames of `studies` as `fmt` files into `out`; return their paths.

    Raises:
        ExportError: an unknown format, or a folder that cannot be written.
        suite.results.ResultsError: an unknown study, or one without runs.
    """
    from suite import results

    check_format(fmt)
    folder = Path(out) if out is not None else default_folder(studies)
    frames = {
        "runs": results.runs(studies, uri=uri),
        "curves": results.curves(studies, uri=uri),
        "summary": results.summary(studies, uri=uri),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as err:
        raise ExportError(f"--out {folder}: cannot write there ({err.strerror or err})") from None
    try:
        written = [_write(frame, staging / f"{name}.{fmt}", fmt) for name, frame in frames.items()]
        paths = []
        for path in written:
            target = folder / path.name
            os.replace(path, target)
            paths.append(target)
        return paths
    except OSError as err:
        raise ExportError(f"--out {folder}: cannot write there ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "json":
        rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        path.write_text(json.dumps(rows, default=_json_value, indent=1), encoding="utf-8")
    else:
        _for_csv(frame).to_csv(path, index=False)
    return path


def _for_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and mappings as JSON text, so a CSV cell holds one value; times in ISO 8601."""
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].map(_iso)
            continue
        if out[column].dtype == object and out[column].map(_nested).any():
            out[column] = out[column].map(lambda v: json.dumps(v) if _nested(v) else v)
    return out


def _json_value(value: Any) -> Any:
    """What `json` cannot write itself: times as ISO 8601, numpy's scalars as numbers."""
    if isinstance(value, pd.Timestamp):
        return _iso(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _iso(value: Any) -> str | None:
    """A time in ISO 8601, always to the microsecond: one format for the whole column."""
    return value.isoformat(timespec="microseconds") if pd.notna(value) else None


def _nested(value: Any) -> bool:
    return isinstance(value, list | dict)
