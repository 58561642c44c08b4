"""User-facing errors and BIDS-App exit codes.

Every mistake a user can make is raised as a :class:`NeurossmError` subclass whose message is
one line saying what went wrong, which file, and what to do. The CLI prints that line and exits
with the error's code; only ``-v`` shows a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# Exit codes from the BIDS-Apps draft (sysexits.h values where they exist).
EX_OK = 0
EX_FAILURE = 1
EX_VALIDATION = 16
EX_NO_FILES = 18
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
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


class BackendUnavailableError(NeurossmError):
    """A compute back end that was asked for explicitly (``--device cuda``) cannot run here."""

    exit_code = EX_UNAVAILABLE


class ValidationError(NeurossmError):
    """The input dataset failed validation."""

    exit_code = EX_VALIDATION


class OutputError(NeurossmError):
    """The output directory cannot be created or written."""

    exit_code = EX_CANTCREAT


def run_reporting_errors(prog: str, verbose: int, work: Callable[[], int | None]) -> int:
    """Call ``work()`` and return its exit code (``None`` means 0), the way every command reports.

    A :class:`NeurossmError` becomes one line on stderr and its exit code; anything unexpected
    becomes one line and exit 1. ``verbose`` adds the traceback to the log.
    """
    try:
        return work() or EX_OK
    except NeurossmError as err:
        if verbose:
            logging.getLogger("neurossm_app").exception("%s failed", prog)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; complete outputs are kept, re-run to finish.", file=sys.stderr)
        return 130
    except Exception as err:
        if verbose:
            logging.getLogger("neurossm_app").exception("%s failed", prog)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"{prog}: error: unexpected {type(err).__name__}: {first} "
            "(re-run with -v for the traceback and report it).",
            file=sys.stderr,
        )
        return EX_FAILURE
