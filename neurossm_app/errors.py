"""User-facing errors and BIDS-App exit codes.

Every mistake a user can make is raised as a :class:`NeurossmError` subclass whose message is
one line saying what went wrong, which file, and what to do. The CLI prints that line and exits
with the error's code; only ``-v`` shows a traceback.
"""

from __future__ import annotations

# Exit codes from the BIDS-Apps draft (sysexits.h values where they exist).
EX_OK = 0
EX_FAILURE = 1
EX_VALIDATION = 16
EX_NO_FILES = 18
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class NeurossmError(Exception):
    """Base class for errors whose message is meant for the user."""

    exit_code = EX_FAILURE


class UsageError(NeurossmError):
    """Options that contradict each other or cannot be parsed."""

    exit_code = EX_USAGE


class InputMissingError(NeurossmError):
    """A required input (dataset, derivative, atlas, label file) is absent."""

    exit_code = EX_NOINPUT


class DataError(NeurossmError):
    """An input exists but its content is malformed or inconsistent."""

    exit_code = EX_DATAERR


class NoFilesSelectedError(NeurossmError):
    """The filters (participant, session, task, filter file) selected nothing."""

    exit_code = EX_NO_FILES


class ValidationError(NeurossmError):
    """The input dataset failed validation."""

    exit_code = EX_VALIDATION


class OutputError(NeurossmError):
    """The output directory cannot be created or written."""

    exit_code = EX_CANTCREAT
