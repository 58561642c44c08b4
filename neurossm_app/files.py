"""Atomic file writes.

Outputs are written to a temporary file in the destination directory and renamed into place, so
an interrupted process or parallel subjects on an HPC array never leave a half-written file that
a later run mistakes for complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffixes (``.tsv``, ``.nii.gz``) so libraries that choose a
    format from the extension write the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def tsv_text(frame: pd.DataFrame, index: bool = False) -> str:
    """A data frame as BIDS TSV text: tab-separated, ``n/a`` for missing, ``\\n`` line ends."""
    return frame.to_csv(sep="\t", index=index, na_rep="n/a", lineterminator="\n")


def write_tsv(path: str | os.PathLike, frame: pd.DataFrame, index: bool = False) -> Path:
    """Write a data frame as a BIDS TSV (see :func:`tsv_text`) atomically."""
    return write_text(path, tsv_text(frame, index=index))


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a BIDS TSV, mapping ``n/a`` to NaN."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def copy_atomic(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy ``source`` onto ``destination`` atomically."""
    import shutil

    return write_atomic(destination, lambda tmp: shutil.copyfile(source, tmp))


def is_present(path: Path) -> bool:
    """``path`` is a non-empty file (TemplateFlow's skeleton holds zero-byte placeholders for
    files not yet downloaded)."""
    return path.is_file() and path.stat().st_size > 0
