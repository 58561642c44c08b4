"""The series cache (issue 23): same values, windows and metrics as the in-memory path; built
once, rebuilt for what changed, safe with parallel builders; the pybids index reused."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurossm_app.cli import main
from neurossm_app.errors import OutputError
from neurossm_app.group import data as group_data
from neurossm_app.group.data import find_timeseries, load_dataset
from neurossm_app.group.series_cache import SeriesStore, cached_series, take
from tests.test_group_fakedata import write_participant_outputs

ATLAS = "Schaefer400n17"
TINY = [
    "--dynamic-length", "24", "--epochs", "2", "--batch-size", "3", "--d-model", "8", "--n-layers", "1",
    "--d-state", "4", "--scales", "1", "--skip-cross-validation", "--seeds", "0", "--baselines", "fc-logreg",
    "--omp-nthreads", "1", "--augment", "noise", "time-mask",
]  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    """Eight subjects, 7 ROIs, unequal run lengths (one shorter than TINY's window), missing values."""
    root = tmp_path_factory.mktemp("series_cache")
    bids, out = write_participant_outputs(root, n_subjects=8, n_rois=7, n_volumes=37, seed=3)
    short = next(out.glob("sub-05/func/*_timeseries.tsv"))
    pd.read_csv(short, sep="\t").iloc[:20].to_csv(short, sep="\t", index=False, na_rep="n/a")
    return bids, out


def _load(bids: Path, out: Path, cache_dir: Path | None, window: int | None = 24):
    scans = find_timeseries(out, ATLAS)
    return load_dataset(
        scans, "participants:sex", bids / "participants.tsv", ATLAS, window, None, cache_dir, out
    )


def _copy(tree: Path, destination: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tree, destination))


def test_cached_series_equal_the_in_memory_ones_and_are_read_once(cohort, tmp_path, monkeypatch):
    bids, out = cohort
    memory = _load(bids, out, None)
    cached = _load(bids, out, tmp_path / "cache")
    assert isinstance(cached.series, SeriesStore) and len(cached.series) == len(memory.series) == 7
    for x, y in zip(memory.series, cached.series, strict=True):
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape and np.array_equal(x, y)
        assert not y.flags.writeable  # a view of the read-only map: nothing can change the cache
    assert cached.summary() == memory.summary()  # missing-value counts, lengths, exclusions
    assert [s.name for s in cached.scans] == [s.name for s in memory.scans]
    (pair,) = (tmp_path / "cache").glob("*.f32")
    stamp = pair.stat().st_mtime_ns
    monkeypatch.setattr(group_data, "load_series", _refuse)
    again = _load(bids, out, tmp_path / "cache")  # warm: no TSV parsed, the pair untouched
    assert np.array_equal(again.series[3], memory.series[3]) and pair.stat().st_mtime_ns == stamp
    chosen = take(again.series, [4, 0])
    assert isinstance(chosen, SeriesStore) and np.array_equal(chosen[1], memory.series[0])
    again.series.release()  # pages handed back; the values read again are the same
    assert np.array_equal(again.series[-1], memory.series[-1])


def test_a_large_build_reads_in_worker_processes_in_order(cohort, monkeypatch):
    """The pool path of ``--nprocs`` (the values are the reader's: ``read_normalized`` in a worker
    is the same function; a cheap reader keeps the test fast)."""
    from neurossm_app.group import series_cache

    _, out = cohort
    paths = sorted(out.rglob("*_timeseries.*"))  # TSVs and sidecars: unequal sizes
    monkeypatch.setattr(series_cache, "PARALLEL_FROM", 2)
    wanted = [5, 0, 3, 1, 2, 7, 4]
    pooled = list(series_cache._reads(os.path.getsize, paths, 2)(wanted))
    assert pooled == [os.path.getsize(paths[i]) for i in wanted] and len(set(pooled)) > 2
    assert list(series_cache._reads(os.path.getsize, paths, 2)(wanted[:1])) == pooled[:1]  # serial


def _refuse(path):
    raise AssertionError(f"{path} was parsed although the cache holds it")


def test_a_changed_and_an_added_run_are_the_only_ones_read_again(cohort, tmp_path, monkeypatch):
    bids, out = cohort
    out = _copy(out, tmp_path / "out")
    cache = tmp_path / "cache"
    _load(bids, out, cache)
    changed = next(out.glob("sub-02/func/*_timeseries.tsv"))
    frame = pd.read_csv(changed, sep="\t")
    frame.iloc[:, 0] = np.arange(len(frame)) % 5
    frame.to_csv(changed, sep="\t", index=False, na_rep="n/a")
    added = next(out.glob("sub-03/func/*_timeseries.tsv"))
    for suffix in (".tsv", ".json"):
        (added.parent / added.name.replace("task-rest", "task-rest_run-2")).with_suffix(suffix).write_bytes(
            added.with_suffix(suffix).read_bytes()
        )
    parsed = []
    real = group_data.load_series
    monkeypatch.setattr(group_data, "load_series", lambda path: parsed.append(path.name) or real(path))
    cached = _load(bids, out, cache)
    assert sorted(parsed) == sorted([changed.name, added.name.replace("task-rest", "task-rest_run-2")])
    assert len(list(cache.glob("*.json"))) == 2  # the earlier pair is kept (another run may use it)
    monkeypatch.setattr(group_data, "load_series", real)
    memory = _load(bids, out, None)
    assert all(np.array_equal(x, y) for x, y in zip(memory.series, cached.series, strict=True))
    assert not np.array_equal(cached.series[1], _load(bids, cohort[1], None).series[1])  # sub-02 changed


def test_parallel_builders_build_once_and_a_damaged_pair_is_rebuilt(cohort, tmp_path):
    _, out = cohort
    paths = [s.path for s in find_timeseries(out, ATLAS)]
    sidecars = [{"n": i} for i in range(len(paths))]
    reads, lock = [], threading.Lock()

    def read_scan(path):
        index = paths.index(path)
        with lock:
            reads.append(index)
        values = np.full((3, 5 + index), index, dtype=np.float32)
        return values, {"missing_rois": 0, "censored_volumes": 0, "missing_values": index}, ("a", "b", "c")

    results = [None] * 4

    def build(slot):
        results[slot] = cached_series(paths, sidecars, ATLAS, tmp_path, read_scan, out)

    threads = [threading.Thread(target=build, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reads) == list(range(len(paths)))  # one builder; the others opened its pair
    assert sum(r.built for r in results) == 1
    assert all(np.array_equal(r.store[6], np.full((3, 11), 6)) for r in results)
    assert results[2].missing[5]["missing_values"] == 5 and results[3].roi_names == ("a", "b", "c")
    (data,) = tmp_path.glob("*.f32")
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size - 4)  # a damaged pair (size check) is built again
    rebuilt = cached_series(paths, sidecars, ATLAS, tmp_path, read_scan, out)
    assert rebuilt.built and np.array_equal(rebuilt.store[7], np.full((3, 12), 7))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"cannot write the series cache in .*file/cache.*--cache-dir"):
        cached_series(paths, [{"other": 1}] * len(paths), ATLAS, tmp_path / "file" / "cache", read_scan, out)


def test_group_results_through_the_cache_are_byte_identical_to_the_in_memory_path(
    cohort, tmp_path, monkeypatch
):
    """Same splits, windows (augmented), epochs, checkpoints and metrics; the second call is warm."""
    from safetensors.numpy import load_file

    bids, out = cohort
    out = _copy(out, tmp_path / "out")
    index = tmp_path / "index"
    # one unit, no aggregation or report: the run's tables are aggregated from the unit's ones
    args = [
        str(bids),
        str(out),
        "group",
        *TINY,
        "--fold",
        "0",
        "--seed",
        "0",
        "--bids-database-dir",
        str(index),
    ]
    assert main([*args, "--run-name", "cached", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert list((tmp_path / "cache").glob("series-*.f32")) and list(index.glob("group-index-*/db"))
    monkeypatch.setattr(group_data, "_read_cached", lambda kept, *rest: group_data._read_all(kept))
    assert main([*args, "--run-name", "memory"]) == 0
    assert not (out / "group" / ".cache").exists()
    cached, memory = out / "group" / "cached", out / "group" / "memory"
    names = ["splits.tsv"]
    names += [str(p.relative_to(memory)) for p in sorted(memory.glob("units/*/*.tsv"))]
    assert len(names) == 1 + 3
    for name in names:
        assert (cached / name).read_bytes() == (memory / name).read_bytes(), name
    weights = sorted(memory.glob("checkpoints/*.safetensors"))
    assert len(weights) == 1
    for path in weights:  # the files differ in their run name only
        a, b = load_file(path), load_file(cached / path.relative_to(memory))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_background_loader_cuts_the_same_batches(cohort, tmp_path):
    import torch

    from neurossm_app.group.train import TrainSettings, background_batches, training_batches

    bids, out = cohort
    dataset = _load(bids, out, tmp_path / "cache")
    settings = TrainSettings(window=24, epochs=1, batch_size=3, lr=1e-3, weight_decay=0.0, augment=("noise",))
    order = np.random.default_rng(0).permutation(len(dataset.series))
    foreground = list(training_batches(dataset.series, order, settings, np.random.default_rng(5)))
    with background_batches(
        training_batches(dataset.series, order, settings, np.random.default_rng(5))
    ) as bg:
        background = list(bg)
    assert len(foreground) == len(background) == 3
    assert all(torch.equal(a, b) for a, b in zip(foreground, background, strict=True))

    def failing():
        yield foreground[0]
        raise ValueError("broken scan")

    with pytest.raises(ValueError, match="broken scan"), background_batches(failing()) as bg:
        list(bg)


def test_the_saved_pybids_index_is_reused_until_a_run_is_added(cohort, tmp_path, caplog, monkeypatch):
    from neurossm_app.group import output_index
    from neurossm_app.group.output_index import indexed_output_layout

    _, out = cohort
    out = _copy(out, tmp_path / "out")
    query = {"suffix": "timeseries", "extension": ".tsv", "return_type": "filename"}
    with caplog.at_level(logging.INFO, logger="neurossm_app"):
        first = indexed_output_layout(out, tmp_path / "db").get(**query)
        indexed_output_layout(out, tmp_path / "db").get(**{**query, "return_type": "object"})
        with monkeypatch.context() as patch:  # the saved answer: no pybids at all
            patch.setattr(output_index, "output_layout", _refuse)
            again = indexed_output_layout(out, tmp_path / "db").get(**query)
            objects = indexed_output_layout(out, tmp_path / "db").get(**{**query, "return_type": "object"})
    assert sorted(first) == sorted(again) and len(first) == 8
    assert sum("reusing the pybids index" in r.getMessage() for r in caplog.records) == 2
    assert sorted(f.path for f in objects) == sorted(first) and objects[0].entities["atlas"] == ATLAS
    new = next(out.glob("sub-04/func/*_timeseries.tsv"))
    os.link(new, new.with_name(new.name.replace("task-rest", "task-rest_run-2")))
    assert len(indexed_output_layout(out, tmp_path / "db").get(**query)) == 9
    assert len(list((tmp_path / "db").glob("group-index-*"))) == 2
