"""BIDS_DIR's validation by the official validator, run beside the index (see :func:`start_validation`).

A raw dataset is validated; a derivative one (BIDS_DIR given as the fMRIPrep dataset itself,
``DatasetType: derivative``) is not, with an info line: the validator checks raw BIDS. A failure
is one line with the first :data:`SHOWN` errors and their files (:func:`summarize_errors`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

from neurossm_app.errors import ValidationError
from neurossm_app.fmriprep import is_derivative, read_description

LOGGER = logging.getLogger("neurossm_app")

#: How many of the validator's errors the message names.
SHOWN = 5


def start_validation(bids_dir: Path) -> subprocess.Popen | None:
    """Start the official validator on a raw BIDS_DIR when it is installed (see :func:`finish_validation`).

    Returns ``None`` (nothing to wait for) for a derivative dataset or without a validator.
    """
    if is_derivative(read_description(bids_dir)):
        LOGGER.info(
            "BIDS_DIR %s is a derivative dataset (DatasetType: derivative); raw-BIDS validation skipped",
            bids_dir,
        )
        return None
    validator = shutil.which("bids-validator-deno") or shutil.which("bids-validator")
    if validator is None:
        LOGGER.warning("bids-validator-deno not found; skipping validation of %s", bids_dir)
        return None
    # --json: machine-readable issues with their files (both the deno and the legacy validator)
    return subprocess.Popen(
        [validator, "--json", str(bids_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def finish_validation(validation: subprocess.Popen | None, bids_dir: Path) -> None:
    """Wait for the validator; exit 16 (ValidationError) if it found errors."""
    if validation is None:
        return
    stdout, _ = validation.communicate()
    if validation.returncode != 0:
        raise ValidationError(
            f"BIDS_DIR {bids_dir} failed BIDS validation ({summarize_errors(stdout)}); run "
            f"`bids-validator-deno {bids_dir}` for the full report, fix the dataset, "
            "or pass --skip-bids-validation."
        )


def summarize_errors(output: str) -> str:
    """The first :data:`SHOWN` errors of a validator's output as ``CODE file; ...; and N more``.

    ``output`` is the validator's JSON (bids-validator-deno's ``issues.issues``, or the legacy
    validator's ``issues.errors``) or its text report.
    """
    errors = _json_errors(output)
    if errors is None:
        errors = _text_errors(output)
    if not errors:
        return "no error listed in its output"
    shown = "; ".join(f"{code} {where}".strip() for code, where in errors[:SHOWN])
    more = f"; and {len(errors) - SHOWN} more" if len(errors) > SHOWN else ""
    return f"{len(errors)} error(s): {shown}{more}"


def _json_errors(output: str) -> list[tuple[str, str]] | None:
    """``(code, file)`` per error of a JSON report, or ``None`` when ``output`` is not one."""
    try:
        report = json.loads(output)
        issues = report["issues"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if isinstance(issues.get("issues"), list):  # bids-validator-deno
        return [
            (str(i.get("code", "ERROR")), str(i.get("location", "")))
            for i in issues["issues"]
            if isinstance(i, dict) and i.get("severity") == "error"
        ]
    errors = []
    for issue in issues.get("errors", []) if isinstance(issues.get("errors"), list) else []:  # legacy
        files = [f.get("file") or {} for f in issue.get("files", []) if isinstance(f, dict)]
        paths = [str(f.get("relativePath", "")) for f in files if isinstance(f, dict)] or [""]
        errors += [(str(issue.get("key", "ERROR")), path) for path in paths]
    return errors


# "(EMPTY_FILE)" at the end (deno 2+), "[ERROR] NOT_INCLUDED ..." (deno 1.x), "(code: 36 - NIFTI_TOO_SMALL)"
_CODE = re.compile(r"[(-] ?([A-Z0-9_]{3,})\)\s*$|^\s*\[ERROR\]\s+([A-Z0-9_]{3,})\b")


def _text_errors(output: str) -> list[tuple[str, str]]:
    """``(code, file)`` per error of a text report: an ``[ERROR]`` line (its code in parentheses
    at the end, or right after ``[ERROR]``), then its files, one per indented ``./``/``/`` line."""
    errors: list[tuple[str, str]] = []
    code, files, in_error = None, [], False
    for line in [*output.splitlines(), "[END]"]:
        stripped = line.strip()
        if stripped.startswith(("[ERROR]", "[WARNING]", "[END]")) or re.match(
            r"^\d+: \[(ERR|WARN)\]", stripped
        ):
            if in_error:
                errors += [(code or "ERROR", f) for f in files] or [(code or "ERROR", "")]
            in_error = "[ERROR]" in stripped or "[ERR]" in stripped
            found = _CODE.search(stripped)
            code, files = (next(g for g in found.groups() if g) if found else None), []
        elif in_error and stripped.startswith(("./", "/")):
            files.append(stripped)
        elif in_error and code is None and (found := _CODE.search(stripped)):
            code = next(g for g in found.groups() if g)  # the deno report's "(CODE)" line
    return errors
