"""Shared fixtures: synthetic datasets, and atlas caches the real fetchers read offline.

TemplateFlow reads ``TEMPLATEFLOW_HOME`` when it is first imported, so the variables point at a
per-process folder before any test runs; the ``atlas_cache`` fixture fills it before anything
imports templateflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")
_ATLAS_CACHE = Path(tempfile.mkdtemp(prefix="neurossm-test-atlases-"))
os.environ["TEMPLATEFLOW_HOME"] = str(_ATLAS_CACHE / "templateflow")
os.environ["NILEARN_DATA"] = str(_ATLAS_CACHE / "nilearn_data")
os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"


def pytest_configure(config):
    """Under ``pytest -n N`` each worker gets its share of the cores for in-process torch work.

    Tests that train or attribute in the pytest process itself (test_cpa's fixture, the scan
    kernels' checks) would otherwise take torch's default, every core, in each of the N workers:
    on the two cores here that oversubscription made test_cpa's fixture 20 times slower while
    the other worker trained too. The CLI's own training runs set ``--omp-nthreads`` themselves.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    """Modules marked ``slow`` run first; the others keep their order.

    ``make test`` hands whole modules to two workers in the order collected here
    (``--dist loadscope --no-loadscope-reorder``). xdist's own order puts the modules with the
    most tests first, and so started the one-test, three-minute sex-effect module last: one
    worker then trained it alone while the other had nothing left to run. Started first, the
    slow modules overlap the many short ones.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: order kept within


@pytest.fixture(scope="session")
def atlas_cache() -> Path:
    """The synthetic Schaefer-400 (in both templates) and AAL3v2 atlases, where TemplateFlow and
    nilearn look."""
    from neurossm_app.synthetic.atlas import install_atlases

    install_atlases(_ATLAS_CACHE)
    return _ATLAS_CACHE


def make_synthetic(out_dir: Path, atlas_cache: Path, **options) -> Path:
    """A synthetic BIDS + fMRIPrep dataset whose atlases live in the shared test cache."""
    from neurossm_app.synthetic import make_dataset

    return Path(make_dataset(out_dir, atlas_cache=atlas_cache, **options))


@pytest.fixture(scope="session")
def rest_dataset(tmp_path_factory, atlas_cache) -> Path:
    """Four subjects, one resting-state run of 100 volumes each."""
    return make_synthetic(
        tmp_path_factory.mktemp("rest") / "ds", atlas_cache, subjects=4, volumes=100, seed=1
    )


@pytest.fixture(scope="session")
def participant_outputs(rest_dataset, tmp_path_factory) -> Path:
    """OUTPUT_DIR after the participant level (Schaefer-400, 36P, no low-pass) on ``rest_dataset``."""
    from neurossm_app.cli import main

    out = tmp_path_factory.mktemp("participant") / "out"
    argv = [
        str(rest_dataset),
        str(out),
        "participant",
        "--skip-bids-validation",
        "-w",
        str(out.parent / "work"),
        "--nprocs",
        "2",
        "--confounds",
        "36P",
        # 100 volumes at TR 0.72 s keep about 12 degrees of freedom in 0.01-0.1 Hz: too few for 37
        "--low-pass",
        "none",
    ]
    assert main(argv) == 0
    return out
