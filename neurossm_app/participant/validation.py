"""BIDS_DIR's validation by the official validator, run beside the index (see :func:`start_validation`)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from neurossm_app.errors import ValidationError

LOGGER = logging.getLogger("neurossm_app")


def start_validation(bids_dir: Path) -> subprocess.Popen | None:
    """Start the official validator on BIDS_DIR when it is installed (see :func:`finish_validation`)."""
    validator = shutil.which("bids-validator-deno") or shutil.which("bids-validator")
    if validator is None:
        LOGGER.warning("bids-validator-deno not found; skipping validation of %s", bids_dir)
        return None
    return subprocess.Popen(
        [validator, str(bids_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def finish_validation(validation: subprocess.Popen | None, bids_dir: Path) -> None:
    """Wait for the validator; exit 16 (ValidationError) if it found errors."""
    if validation is None:
        return
    stdout, _ = validation.communicate()
    if validation.returncode != 0:
        errors = [line for line in stdout.splitlines() if "ERROR" in line.upper()]
        first = errors[0].strip() if errors else "see the validator's report"
        raise ValidationError(
            f"BIDS_DIR {bids_dir} failed BIDS validation ({first}); fix it or pass --skip-bids-validation."
        )
