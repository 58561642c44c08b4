"""The group level's pybids index of OUTPUT_DIR, saved under ``--bids-database-dir`` and reused.

pybids reuses a saved index without looking at the files again, so an index saved once would
miss runs the participant level wrote later. The saved index is therefore named after what it
indexed: ``DIR/group-index-<key>/`` where ``<key>`` hashes OUTPUT_DIR's resolved path, the pybids
version and the modification time of every folder below its ``sub-*`` folders (a run written,
renamed into place or removed changes its folder's time; a subject added adds a folder). A call whose tree has the same key
loads the index in a fraction of the time indexing takes (every unit of an HPC array after the
first); any other call indexes afresh into a new folder.

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
from pathlib import Path

from neurossm_app.bids import output_layout
from neurossm_app.errors import OutputError

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
    """:func:`~neurossm_app.bids.output_layout`, loaded from ``database_dir`` when a valid index
    of this tree is there, else indexed (and saved there when ``database_dir`` is given).

    Raises
    ------
    OutputError
        ``database_dir`` cannot be created or written.
    """
    if database_dir is None:
        return output_layout(output_dir)
    final = database_dir / f"group-index-{index_key(output_dir)}"
    if (final / _COMPLETE).is_file():
        LOGGER.info("reusing the pybids index of %s in %s", output_dir, final)
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
