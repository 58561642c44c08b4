"""Versions of the software that determine written numbers, for sidecars and run records."""

from __future__ import annotations

import platform
import shlex
import time
from importlib import metadata
from typing import Any

from neurossm_app import __version__

PARTICIPANT_PACKAGES = ("nilearn", "nipype", "nibabel", "numpy", "scipy", "pandas")
GROUP_PACKAGES = ("torch", "numpy", "pandas", "scikit-learn", "safetensors")
IMPORT_PACKAGES = ("numpy", "pandas")
#: What the group report and ``summary.json`` name beside the neurossm-app version.
REPORT_PACKAGES = ("torch", "mamba-ssm", "nilearn", "nimare")


def software_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """``{"neurossm-app": ..., <package>: <version> ..., "python": ...}`` for installed distributions.

    Parameters
    ----------
    packages
        Distribution names (as pip knows them); one of the ``*_PACKAGES`` tuples of this module.
        A package that is not installed is recorded as ``"not installed"``.
    """
    versions = {"neurossm-app": __version__}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def call_provenance(
    command_line: list[str] | None, packages: tuple[str, ...] = REPORT_PACKAGES
) -> dict[str, Any]:
    """What made a call's outputs, for its records and reports: the neurossm-app version, the
    exact command line, the date and the versions of ``packages``."""
    versions = software_versions(packages)
    return {
        "neurossm-app": versions["neurossm-app"],
        "command_line": shlex.join(command_line)
        if command_line
        else "unknown (not called from the command line)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": versions,
    }
