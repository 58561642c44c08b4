"""The series cache: the selected scans' normalized series in one memory-mapped float32 file.

Parsing every participant-level ``_timeseries.tsv`` costs about 0.1 s per 1,200 x 400 file, and
holding every series in memory grows with the cohort. The group level therefore consolidates the
normalized series of a selection once into ``CACHE_DIR`` (default ``OUTPUT_DIR/group/.cache``)::

    series-<atlas>-<key>.f32    float32, scan after scan, each scan (R, T_i) in C order
    series-<atlas>-<key>.json   the index: ROI names and per scan its file, offset, volumes,
                                missing-value counts and content key (written last: complete)
    series-<atlas>-<key>.lock   taken while the pair is built

``<key>`` hashes the cache format, the normalization and every scan's content key (its path,
the TSV's size and modification time and a hash of its sidecar's content), so any changed, added
or removed run makes a new pair; scans whose content key an older pair of the atlas holds are
copied from it, and only the others are parsed again. Parallel calls (an HPC array's units)
build a pair once: the first takes the lock, the others wait and open what it wrote; where the
file system has no locks, each builds privately and renames identical bytes into place. Both
files are written to a temporary name and renamed, the index last. The cache holds nothing that
the participant-level outputs do not: it is safe to delete at any time when no group call runs.

Reading is bounded by one scan: :class:`SeriesStore` hands out read-only (R, T_i) views of the
memory map, and :meth:`SeriesStore.release` gives the pages of scans already read back to the
kernel, so a process's resident memory stays at model + batch + a scan, not the cohort.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neurossm_app.errors import DataError, OutputError
from neurossm_app.files import write_json

LOGGER = logging.getLogger("neurossm_app")

CACHE_FORMAT = 1
CACHE_FOLDER = ".cache"
_PAGE = mmap.PAGESIZE


def default_cache_dir(output_dir: Path) -> Path:
    """``OUTPUT_DIR/group/.cache``."""
    return output_dir / "group" / CACHE_FOLDER


class SeriesStore(Sequence):
    """Scans of one cache file: item ``i`` is a read-only (R, T_i) float32 view of the memory map.

    Parameters
    ----------
    values : numpy.ndarray, (sum R T_i,) float32
        The whole file, memory-mapped.
    offsets, lengths : numpy.ndarray, (N,) int64
        Start (in values) and volumes of every scan.
    n_rois : int
    mapping : mmap.mmap, optional
        The mapping behind ``values`` (for :meth:`release`).
    """

    def __init__(
        self,
        values: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        n_rois: int,
        mapping: mmap.mmap | None = None,
    ) -> None:
        self.values, self.n_rois, self.mapping = values, n_rois, mapping
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"scan {index} of {len(self)}")
        start, volumes = int(self.offsets[index]), int(self.lengths[index])
        return self.values[start : start + self.n_rois * volumes].reshape(self.n_rois, volumes)

    def take(self, indices) -> SeriesStore:
        """The scans ``indices`` (in that order), sharing this store's memory map."""
        chosen = np.asarray(list(indices), dtype=np.int64)
        return SeriesStore(self.values, self.offsets[chosen], self.lengths[chosen], self.n_rois, self.mapping)

    def release(self, indices=None) -> None:
        """Drop the memory map's pages of scans ``indices`` (default: all) from this process.

        The mapping is read-only, so this only frees resident memory: the next read of those
        scans finds them in the kernel's page cache (or on disk) again.
        """
        if self.mapping is None or not hasattr(self.mapping, "madvise"):
            return
        chosen = range(len(self)) if indices is None else indices
        itemsize = self.values.itemsize
        for index in chosen:
            start = int(self.offsets[index]) * itemsize
            stop = start + self.n_rois * int(self.lengths[index]) * itemsize
            first = start - start % _PAGE
            last = min(-(-stop // _PAGE) * _PAGE, len(self.mapping))
            if last > first:
                self.mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def take(series: Sequence[np.ndarray], indices) -> Sequence[np.ndarray]:
    """``series[i] for i in indices``: a :class:`SeriesStore` stays one (views of its map), a list a list."""
    if isinstance(series, SeriesStore):
        return series.take(indices)
    return [series[i] for i in indices]


def release(series: Sequence[np.ndarray], indices=None) -> None:
    """:meth:`SeriesStore.release` when ``series`` is one; nothing for arrays in memory."""
    if isinstance(series, SeriesStore):
        series.release(indices)


@dataclass(frozen=True)
class CachedSeries:
    """What :func:`cached_series` returns: the store, each scan's missing counts, the ROI names."""

    store: SeriesStore
    missing: list[dict[str, int]]
    roi_names: tuple[str, ...]
    built: bool  # this call wrote the pair (False: it was there)


def scan_content_key(path: Path, sidecar: dict[str, Any]) -> str:
    """``<size>:<mtime_ns>:<sha256 of the sidecar's content>`` of one time-series TSV."""
    stat = path.stat()
    digest = hashlib.sha256(json.dumps(sidecar, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest}"


def selection_key(atlas_label: str, entries: list[tuple[str, str]], normalization: str) -> str:
    """Hash of the cache format, the normalization and the (name, content key) of every scan."""
    text = json.dumps([CACHE_FORMAT, normalization, atlas_label, entries])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_paths(cache_dir: Path, atlas_label: str, key: str) -> dict[str, Path]:
    """The ``data``, ``index`` and ``lock`` files of one selection."""
    stem = f"series-{_file_label(atlas_label)}-{key}"
    return {
        k: cache_dir / f"{stem}.{ext}" for k, ext in (("data", "f32"), ("index", "json"), ("lock", "lock"))
    }


def cached_series(
    paths: list[Path],
    sidecars: list[dict[str, Any]],
    atlas_label: str,
    cache_dir: Path,
    read_scan,
    output_dir: Path | None = None,
    normalization: str = "",
    workers: int = 1,
) -> CachedSeries:
    """Open the cache pair of these scans, building it first when it is missing or damaged.

    Parameters
    ----------
    paths : list of Path, length N
        The scans' time-series TSVs, in the order of the store.
    sidecars : list of dict, length N
        Their JSON sidecars (part of every scan's content key).
    atlas_label : str
    cache_dir : Path
    read_scan : callable
        ``read_scan(path) -> (normalized (R, T) float32, missing dict, roi_names)``: how a scan
        is read and normalized when no cache has it (a module-level function, for ``workers``).
    output_dir : Path, optional
        Paths are recorded relative to it (the cache moves with OUTPUT_DIR).
    normalization : str
        Description of the normalization (part of the key).
    workers : int
        Processes that read the scans to parse when there are at least :data:`PARALLEL_FROM`
        (``--nprocs``); the bytes written are the same.

    Raises
    ------
    OutputError
        The cache is missing and its folder cannot be written.
    DataError
        What ``read_scan`` raises; scans whose ROI columns differ.
    """
    names = [_relative(p, output_dir) for p in paths]
    keys = [scan_content_key(p, c) for p, c in zip(paths, sidecars, strict=True)]
    entries = list(zip(names, keys, strict=True))
    files = cache_paths(cache_dir, atlas_label, selection_key(atlas_label, entries, normalization))
    opened = open_cache(files, entries)
    if opened is not None:
        return opened
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(files["lock"]):
            opened = open_cache(files, entries)  # built by another call while this one waited
            if opened is not None:
                return opened
            started = time.monotonic()
            reused = build_cache(files, entries, cache_dir, atlas_label, _reads(read_scan, paths, workers))
    except OSError as err:
        raise OutputError(
            f"cannot write the series cache in {cache_dir} ({err.filename or cache_dir}: {err.strerror}); "
            "pass --cache-dir with a folder you can write to."
        ) from None
    LOGGER.info(
        "series cache: wrote %s (%d scan(s), %d copied from an earlier cache, %d read) in %.1f s",
        files["data"], len(entries), reused, len(entries) - reused, time.monotonic() - started,
    )  # fmt: skip
    opened = open_cache(files, entries)
    if opened is None:
        raise DataError(f"the series cache {files['data']} could not be read back; delete {cache_dir}.")
    return CachedSeries(opened.store, opened.missing, opened.roi_names, built=True)


def open_cache(files: dict[str, Path], entries: list[tuple[str, str]]) -> CachedSeries | None:
    """The pair as a store, or ``None`` when it is missing, of another format or damaged."""
    index = _read_index(files["index"])
    if index is None or [tuple(s[:2]) for s in index["scans"]] != [tuple(e) for e in entries]:
        return None
    n_rois = len(index["roi_names"])
    offsets = np.array([s[2] for s in index["scans"]], dtype=np.int64)
    lengths = np.array([s[3] for s in index["scans"]], dtype=np.int64)
    try:
        with open(files["data"], "rb") as handle:
            if os.fstat(handle.fileno()).st_size != 4 * n_rois * int(lengths.sum()):
                return None
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    values = np.frombuffer(mapping, dtype=np.float32)
    missing = [dict(zip(("missing_rois", "censored_volumes", "missing_values"), s[4:7], strict=True))
               for s in index["scans"]]  # fmt: skip
    store = SeriesStore(values, offsets, lengths, n_rois, mapping)
    return CachedSeries(store, missing, tuple(index["roi_names"]), built=False)


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return None
    return index


def build_cache(
    files: dict[str, Path], entries: list[tuple[str, str]], cache_dir: Path, atlas_label: str, reads
) -> int:
    """Write the data file, then the index; scans an older pair of the atlas holds are copied.

    ``reads(wanted)`` yields the read scans of ``wanted`` (indices into ``entries``), in order
    (:func:`_reads`).

    Returns
    -------
    int
        Scans copied from older pairs (the others were read).
    """
    earlier = _earlier_scans(cache_dir, atlas_label, files["index"])
    parsed = reads([i for i, entry in enumerate(entries) if entry not in earlier])
    rows, roi_names, offset, copied = [], None, 0, 0
    tmp = files["data"].with_name(f".{files['data'].name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as out:
            for name, key in entries:
                found = earlier.get((name, key))
                if found is not None:
                    values, missing, names = found()
                    copied += 1
                else:
                    values, missing, names = next(parsed)
                roi_names = _check_rois(roi_names, names, name, entries[0][0])
                out.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
                counts = [missing["missing_rois"], missing["censored_volumes"], missing["missing_values"]]
                rows.append([name, key, offset, int(values.shape[1]), *counts])
                offset += values.size
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, files["data"])
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    index = {
        "format": CACHE_FORMAT,
        "atlas": atlas_label,
        "roi_names": list(roi_names or ()),
        "columns": ["scan", "content_key", "offset", "volumes", "missing_rois", "censored_volumes",
                    "missing_values"],
        "scans": rows,
    }  # fmt: skip
    write_json(files["index"], index)  # last: the pair is complete
    return copied


#: Scans to parse from which ``workers`` > 1 starts a process pool (fewer: not worth its start).
PARALLEL_FROM = 64


def _reads(read_scan, paths: list[Path], workers: int):
    """``reads(wanted)``: ``read_scan(paths[i])`` for ``i`` in ``wanted``, in order, in ``workers``
    processes (at most two scans each ahead of the writer) when ``wanted`` is long enough."""

    def reads(wanted: list[int]) -> Iterator:
        if workers <= 1 or len(wanted) < PARALLEL_FROM:
            yield from (read_scan(paths[i]) for i in wanted)
            return
        import multiprocessing
        from collections import deque
        from concurrent.futures import ProcessPoolExecutor

        LOGGER.info("series cache: parsing %d scan(s) in %d processes", len(wanted), workers)
        context = multiprocessing.get_context("spawn")  # not fork: torch's threads may be running
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            todo, pending = iter(wanted), deque()
            for i in todo:
                pending.append(pool.submit(read_scan, paths[i]))
                if len(pending) == 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(read_scan, paths[following]))
                yield result

    return reads


def _check_rois(roi_names, names, name: str, first: str):
    if roi_names is not None and tuple(names) != tuple(roi_names):
        raise DataError(
            f"{Path(name).name} has other ROI columns than {Path(first).name}; "
            "re-run the participant level with one atlas for every subject."
        )
    return tuple(names)


def _earlier_scans(cache_dir: Path, atlas_label: str, skip: Path) -> dict[tuple[str, str], Any]:
    """(name, content key) -> a reader of that scan, over every complete older pair of the atlas."""
    found: dict[tuple[str, str], Any] = {}
    for index_path in sorted(cache_dir.glob(f"series-{_file_label(atlas_label)}-*.json")):
        if index_path == skip:
            continue
        index = _read_index(index_path)
        if index is None:
            continue
        entries = [(s[0], s[1]) for s in index["scans"]]
        opened = open_cache({"index": index_path, "data": index_path.with_suffix(".f32")}, entries)
        if opened is None:
            continue
        for position, entry in enumerate(entries):
            found.setdefault(entry, _reader(opened, position))
    return found


def _reader(opened: CachedSeries, position: int):
    def read() -> tuple[np.ndarray, dict[str, int], tuple[str, ...]]:
        values = np.array(opened.store[position])
        opened.store.release([position])
        return values, opened.missing[position], opened.roi_names

    return read


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block; without lock support, no lock (the
    atomic renames of identical bytes keep parallel builders safe, they only repeat the work)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError as err:
            LOGGER.debug("series cache: no lock on %s (%s); building without one", path, err)
        yield
    finally:
        handle.close()  # releases the lock


def _file_label(atlas_label: str) -> str:
    """The atlas label's letters and digits (it is a BIDS entity value: nothing else, normally)."""
    return "".join(ch for ch in atlas_label if ch.isascii() and ch.isalnum()) or "atlas"


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        with contextlib.suppress(ValueError):
            return path.relative_to(root).as_posix()
    return path.as_posix()
