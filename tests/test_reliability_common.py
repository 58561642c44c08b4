"""Helpers shared by the reliability suites (``test_reliability_*.py``); no tests of its own.

- copies of synthetic datasets (without ``sourcedata``) to break one thing in;
- SHA-256 digests of whole trees (inputs must be unchanged by any call);
- the CLI as a subprocess, with an environment that points at the test atlas cache and a
  ``sitecustomize`` that refuses (and records) every network connection, in this process and in
  every Python process it starts (nipype's MultiProc workers included);
- a tiny group-level configuration that trains in about a second per unit on two CPU cores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: ``python -m neurossm_app.cli`` without needing a ``__main__`` module.
CLI = [sys.executable, "-c", "import sys; from neurossm_app.cli import main; sys.exit(main(sys.argv[1:]))"]

#: A NeuroSSM small enough for the tests (hcp-rest preset: target participants:sex, Schaefer-400).
TINY_GROUP = [
    "--dynamic-length", "32", "--epochs", "3", "--batch-size", "4", "--lr", "5e-3",
    "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--scales", "1",
    "--folds", "2", "--seeds", "0", "--omp-nthreads", "1", "--baselines", "none",
]  # fmt: skip

FMRIPREP = Path("derivatives") / "fmriprep"

_NO_NETWORK_SITE = '''\
"""Test harness: refuse every network connection of this process (AF_UNIX stays allowed)."""
import os
import socket

_LOG = os.environ.get("NEUROSSM_TEST_NETLOG")


def _refuse(what, address):
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(f"{os.getpid()} {what} {address!r}\\n")
    raise OSError(101, f"network access blocked by the test harness ({what} {address!r})")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse("connect", address)
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse("connect_ex", address)
    return _connect_ex(self, address)


def create_connection(address, *args, **kwargs):
    _refuse("create_connection", address)


def getaddrinfo(host, *args, **kwargs):
    _refuse("getaddrinfo", host)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.create_connection = create_connection
socket.getaddrinfo = getaddrinfo
'''


def copy_dataset(source: Path, destination: Path) -> Path:
    """Copy a synthetic dataset (without ``sourcedata``, which no level reads)."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("sourcedata"))
    return destination


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path -> SHA-256`` of every file under ``root`` (empty if it does not exist)."""
    if not root.exists():
        return {}
    digest = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def files_under(root: Path) -> set[str]:
    """Relative paths of the files (not folders) under ``root``."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def no_network_env(atlas_cache: Path, folder: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """Environment for CLI subprocesses: the test atlases, one thread, and no network.

    Returns
    -------
    env : dict
    netlog : Path
        Where refused connection attempts are written (one line each); absent when none.
    """
    site = folder / "no_network_site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_NETWORK_SITE)
    netlog = folder / "network_attempts.log"
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])]),
            "NEUROSSM_TEST_NETLOG": str(netlog),
            "TEMPLATEFLOW_HOME": str(atlas_cache / "templateflow"),
            "NILEARN_DATA": str(atlas_cache / "nilearn_data"),
            "TEMPLATEFLOW_AUTOUPDATE": "0",
            "NIPYPE_NO_ET": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "NUMBA_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0",
        }
    )
    env.update(extra)
    return env, netlog


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``neurossm-app ARGS`` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(
        [*CLI, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``neurossm-app ARGS`` in its own process group (so it can be killed with its workers)."""
    handle = open(log, "w")  # the child owns it from here
    return subprocess.Popen(
        [*CLI, *map(str, args)], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def error_line(stderr: str) -> str:
    """The one ``neurossm-app: error:`` line of a failed call (asserts there is exactly one)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    return errors[0]
