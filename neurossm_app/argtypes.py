"""What every command line of the package shares: the BIDS-App parser and argument types.

``neurossm-app``, ``neurossm-synth``, ``neurossm-app-fetch`` and ``neurossm-app-import`` all build
their parsers on :class:`BidsAppParser`, so a usage error looks and exits the same everywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neurossm_app.errors import EX_USAGE


class BidsAppParser(argparse.ArgumentParser):
    """argparse that accepts ``--participant_label`` for ``--participant-label`` and exits 64
    (the BIDS-Apps draft's usage error): the usage on stdout, one error line on stderr."""

    def _parse_optional(self, arg_string):
        if arg_string.startswith("--") and "_" in arg_string.split("=")[0]:
            name, sep, value = arg_string.partition("=")
            arg_string = name.replace("_", "-") + sep + value
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stdout)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def abs_path(value: str) -> Path:
    """An absolute path (``~`` expanded); existence is checked by whoever reads it."""
    return Path(value).expanduser().resolve()


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return number
