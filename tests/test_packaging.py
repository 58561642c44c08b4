"""Packaging: the wheel (as the Docker image installs it) carries all its data files, and the
minimum-version constraints of ``make test-min`` are the floors that setup.cfg declares."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_package_data_file(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("neurossm_app-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = [
        p.relative_to(ROOT).as_posix() for p in (ROOT / "neurossm_app" / "data").rglob("*") if p.is_file()
    ]
    assert data_files
    missing = [f for f in data_files if f not in names and "__pycache__" not in f]
    assert missing == []
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    for script in ("neurossm-app =", "neurossm-synth =", "neurossm-app-fetch =", "neurossm-app-import ="):
        assert script in entry_points


def _constraints(setup_cfg: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "min_constraints.py"), str(setup_cfg)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise AssertionError(done.stderr.strip())
    return [line for line in done.stdout.splitlines() if not line.startswith("#")]


def test_minimum_version_constraints_pin_every_floor_but_torch():
    """``make test-min`` installs exactly these: each install_requires floor as ``==``."""
    from packaging.requirements import Requirement
    from setuptools.config.setupcfg import read_configuration

    declared = [Requirement(r) for r in read_configuration(ROOT / "setup.cfg")["options"]["install_requires"]]
    pins = [Requirement(line) for line in _constraints(ROOT / "setup.cfg")]
    assert [p.name for p in pins] == [r.name for r in declared if r.name != "torch"]
    for pin, requirement in zip(pins, (r for r in declared if r.name != "torch"), strict=True):
        (floor,) = [s for s in requirement.specifier if s.operator == ">="]
        assert str(pin.specifier) == f"=={floor.version}"
    (torch,) = [r for r in declared if r.name == "torch"]
    assert "2.13.0" in torch.specifier  # the CPU wheel that make venv and make test-min install


def test_minimum_version_constraints_refuse_a_requirement_without_floor(tmp_path):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[options]\ninstall_requires =\n    numpy>=1.24.1\n    # a comment\n    pandas\n")
    with pytest.raises(AssertionError, match="'pandas' has no single '>=' floor"):
        _constraints(setup_cfg)
    setup_cfg.write_text(
        "[options]\ninstall_requires =\n    numpy>=1.24.1  # why\n    isal>=1.6; python_version>'3'\n"
    )
    assert _constraints(setup_cfg) == ["numpy==1.24.1", "isal==1.6 ; python_version>'3'"]
