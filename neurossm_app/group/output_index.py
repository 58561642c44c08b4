"""The group level's pybids index of OUTPUT_DIR, saved under ``--bids-database-dir`` and reused.

pybids reuses a saved index without looking at the files again, so an index saved once would
miss runs the participant level wrote later. The saved index is therefore named after what it
indexed: ``DIR/group-index-<key>/`` where ``<key>`` hashes OUTPUT_DIR's resolved path, the pybids
version and the modification time of every folder below its ``sub-*`` folders (a run written,
renamed into place or removed changes its folder's time; a subject added adds a folder). A call
whose tree has the same key reuses it (every unit of an HPC array after the first); any other
call indexes afresh into a new folder. The answers of the group level's queries are saved beside
the index (``query-<hash>.json``), so a call that asks what an earlier one asked needs no pybids
at all: loading a pybids index and querying it costs about as much as indexing.

Parallel calls never share a half-written index: each indexes into a private temporary folder
and renames it into place (the first rename wins; the others keep theirs unused and delete it).
The index of the participant level (pybids' files directly in DIR) is left alone: the group
level's indexes live in their own ``group-index-*`` sub-folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurossm_app.bids import output_layout
from neurossm_app.errors import OutputError
from neurossm_app.files import write_json

LOGGER = logging.getLogger("neurossm_app")

INDEX_FORMAT = 1
_COMPLETE = "complete.json"


def tree_signature(output_dir: Path) -> list[tuple[str, int]]:
    """(relative folder, mtime_ns) of every ``sub-*`` folder of OUTPUT_DIR and every folder below.

    OUTPUT_DIR's own time is left out: the group level's first call creates ``group/`` in it.
    """
    signature = []
    for subject in sorted(output_dir.glob("sub-*")):
        if not subject.is_dir():
            continue
        for folder, dirs, _ in os.walk(subject):
            dirs.sort()
            here = Path(folder)
            signature.append((here.relative_to(output_dir).as_posix(), here.stat().st_mtime_ns))
    return signature


def index_key(output_dir: Path) -> str:
    """Hash of what the index depends on: the folder, the pybids version, :func:`tree_signature`."""
    import bids

    text = json.dumps([INDEX_FORMAT, str(output_dir.resolve()), bids.__version__, tree_signature(output_dir)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def indexed_output_layout(output_dir: Path, database_dir: Path | None):
    """:func:`~neurossm_app.bids.output_layout`, or with ``database_dir`` a :class:`SavedQueries`
    over the index of this tree saved there (built on the first query no saved answer has).

    Raises
    ------
    OutputError
        ``database_dir`` cannot be created or written.
    """
    if database_dir is None:
        return output_layout(output_dir)
    final = database_dir / f"group-index-{index_key(output_dir)}"
    return SavedQueries(final, lambda: _saved_layout(output_dir, database_dir, final))


@dataclass(frozen=True)
class SavedFile:
    """A file of a saved answer: what the group level reads of a pybids ``BIDSFile``."""

    path: str
    entities: dict[str, str]


class SavedQueries:
    """``layout.get(...)`` answered from ``FOLDER/query-<hash>.json`` when an earlier call of this
    tree saved the answer (no pybids at all: every unit of an array job after the first), else by
    the saved pybids index (loaded, or built, on first need), the answer then saved.

    Files come back as :class:`SavedFile` (path and entities, as strings) from a saved answer,
    as pybids objects otherwise; ``return_type="id"``/``"filename"`` answers as strings.
    """

    def __init__(self, folder: Path, load_layout) -> None:
        self.folder, self._load_layout, self._layout = folder, load_layout, None

    def get(self, **query: Any) -> list[Any]:
        text = json.dumps(query, sort_keys=True, default=str)
        path = self.folder / f"query-{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"
        objects = query.get("return_type", "object") == "object"
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text())
            if saved.get("query") == text:
                LOGGER.info("reusing the pybids index of this OUTPUT_DIR: its answer in %s", path)
                return [SavedFile(**f) for f in saved["files"]] if objects else saved["files"]
        if self._layout is None:
            self._layout = self._load_layout()
        result = self._layout.get(**query)
        if objects:
            files = [{"path": f.path, "entities": {k: str(v) for k, v in f.entities.items()}} for f in result]
        else:
            files = [str(r) for r in result]
        with contextlib.suppress(OSError):  # an answer not saved is asked again next time
            write_json(path, {"query": text, "files": files})
        return result


def _saved_layout(output_dir: Path, database_dir: Path, final: Path):
    """The pybids layout of ``output_dir`` from its index in ``final``, built there first if missing."""
    if (final / _COMPLETE).is_file():
        LOGGER.info("loading the pybids index of %s from %s", output_dir, final)
        return output_layout(output_dir, database_path=final / "db")
    tmp = database_dir / f".group-index.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise OutputError(
            f"cannot write the pybids index to --bids-database-dir {database_dir}: {err.strerror}; "
            "choose a folder you can write to."
        ) from None
    try:
        output_layout(output_dir, database_path=tmp / "db")
        (tmp / _COMPLETE).write_text(json.dumps({"output_dir": str(output_dir.resolve())}) + "\n")
        with contextlib.suppress(OSError):  # another call's index is already there: the same files
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("saved the pybids index of %s in %s", output_dir, final)
    return output_layout(output_dir, database_path=final / "db")
