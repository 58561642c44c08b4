"""Failed runs of a participant call: their causes, one line each, and the call's exit code.

A run fails at the pre-flight checks (:func:`neurossm_app.participant.preflight.check_run`) or in
one of its nipype nodes. Either way the other runs go on; the call then prints one line per failed
run and ends with "k of N runs failed" (exit 65 when every failure is a data error, a malformed or
missing input of that run; else 1). A call
over one run reports its error alone, with that error's own exit code.

The cause of a node failure is read back from nipype's crash report, from this call's own crash
folder only, so an earlier call's (or another array job's) report is never taken for this one's.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from neurossm_app.errors import EX_DATAERR, EX_FAILURE, DataError, InputMissingError, NeurossmError

#: Our error as the last line of the traceback in a crash report (nipype indents the interface's
#: traceback inside its own).
_OUR_ERROR = re.compile(r"^\s*neurossm_app\.errors\.(\w+): (.+)$", re.MULTILINE)
#: Any other exception line of a traceback (``ValueError: ...``, ``numpy.linalg.LinAlgError: ...``).
_ANY_ERROR = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): (.*)$", re.MULTILINE)
#: Errors in a run's own inputs; anything else (a bug, a broken work directory) makes the call exit 1.
_DATA_ERRORS = (DataError, InputMissingError)
#: nipype's own wrappers around the interface's exception: not the cause.
_WRAPPERS = ("NodeExecutionError", "RuntimeError")


class RunsFailedError(NeurossmError):
    """Some runs of the call failed (each was reported on its own line before this one)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def error_in_crash_report(text: str, crash: Path) -> NeurossmError:
    """The user-facing error a crash report's traceback carries (ours when it is ours)."""
    from neurossm_app import errors

    ours = _OUR_ERROR.findall(text)
    if ours:
        name, message = ours[-1]
        kind = getattr(errors, name, None)
        kind = kind if isinstance(kind, type) and issubclass(kind, NeurossmError) else DataError
        return kind(message.strip())
    others = [
        (kind, message) for kind, message in _ANY_ERROR.findall(text) if kind.split(".")[-1] not in _WRAPPERS
    ]
    what = f"{others[-1][0]}: {others[-1][1].strip()}" if others else "error"
    return NeurossmError(f"unexpected {what} (crash report: {crash}; re-run with -v and report it)")


def failures_from_crashes(crash_dir: Path, branches: dict[str, str]) -> dict[str, NeurossmError]:
    """``run name -> error`` for every run with a crash report in ``crash_dir``.

    ``branches`` maps each run's workflow branch (:func:`~neurossm_app.participant.workflow.
    branch_name`) to the run's name; a report names its node as ``wf.<branch>.<node>``, so a report
    that names no branch of this call is not taken. The first report of a run (by time) wins: its
    later nodes only fail for want of its output.
    """
    found: dict[str, NeurossmError] = {}
    reports = (
        sorted(crash_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime) if crash_dir.is_dir() else []
    )
    for crash in reports:
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, re.MULTILINE)
        names = [branches[part] for part in (node.group(1).split(".") if node else []) if part in branches]
        if names and names[0] not in found:
            found[names[0]] = error_in_crash_report(text, crash)
    return found


def runs_failed(run_names: Iterable[str], failures: dict[str, NeurossmError], prog: str = "neurossm-app"):
    """The error that ends a call whose ``failures`` (run name -> error) are not empty.

    Over one run it is that run's error. Otherwise one line per failed run goes to standard error
    first, and the error says how many of the call's runs failed; its exit code is 65 when every
    failure is a data error (an input of that run malformed or missing), 1 otherwise.
    """
    names = list(run_names)
    if len(names) == 1:
        return next(iter(failures.values()))
    for name in names:
        if name in failures:
            print(f"{prog}: run {name} failed: {failures[name]}", file=sys.stderr)
    code = EX_DATAERR if all(isinstance(e, _DATA_ERRORS) for e in failures.values()) else EX_FAILURE
    left = len(names) - len(failures)
    written = f"the other {left} are written" if left else "no run was written"
    return RunsFailedError(
        f"{len(failures)} of {len(names)} runs failed (one line each above); {written}. Fix the "
        "inputs named above and re-run the same call: finished runs are reused from -w.",
        code,
    )
