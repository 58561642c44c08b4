"""The installed package (a wheel, as the Docker image installs it) carries all its data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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
