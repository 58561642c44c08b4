"""SIGTERM and Ctrl-C end a call cleanly: no write is cut short and no worker is left running.

SLURM sends SIGTERM to every process of a job at its time limit (SIGKILL follows after
``KillWait``, 30 s by default); Ctrl-C sends SIGINT. While :func:`handle_signals` is active, the
process that installed it turns the signal into an exception at its next step (:class:`Terminated`
for SIGTERM, ``KeyboardInterrupt`` for SIGINT), so ``finally`` blocks run and the atomic writes of
:mod:`neurossm_app.files` remove their temporary files. Inside an :func:`uninterrupted` block (one
run's outputs, which belong together) the exception waits until the block is done.

Forked workers (nipype's MultiProc) inherit the handler. There the signal raises ``SystemExit``
(an idle worker ends without a traceback), so the worker's own write is undone, and the worker
ends a second later by SIGALRM whatever catches it (nipype's workers catch every exception and
wait for more work).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Exit status after SIGTERM (128 + 15, what a shell reports for a process SIGTERM ended).
EX_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a scheduler's time limit, ``kill``, ``scancel``)."""


_STATE: dict = {"pid": None, "depth": 0, "pending": None, "received": None}


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame) -> None:
    if os.getpid() != _STATE["pid"]:  # a forked worker: undo its write, then end (quietly)
        signal.signal(signum, signal.SIG_DFL)
        signal.alarm(1)
        raise SystemExit(128 + signum)
    if _STATE["received"] is not None:  # already stopping: a second SIGTERM changes nothing
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops the clean-up too
        return
    _STATE["received"] = signum
    if _STATE["depth"]:
        _STATE["pending"] = signum
        return
    raise _interrupt(signum)


@contextmanager
def handle_signals() -> Iterator[dict]:
    """Turn SIGTERM and SIGINT into interrupts for the duration of one command.

    Yields the state; ``state["received"]`` is the signal that arrived (``None`` if none). Outside
    the main thread (where Python cannot install handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield dict(_STATE)
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _STATE.update(pid=os.getpid(), depth=0, pending=None, received=None)
    for sig in saved:
        signal.signal(sig, _handler)
    try:
        yield _STATE
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
        _STATE["pid"] = None


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Let the block finish before a signal that arrives meanwhile interrupts the process."""
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _STATE["depth"] -= 1
    if not _STATE["depth"] and _STATE["pending"] is not None and os.getpid() == _STATE["pid"]:
        signum, _STATE["pending"] = _STATE["pending"], None
        raise _interrupt(signum)


def stop_child_processes(grace: float = 3.0) -> None:
    """SIGTERM this process's multiprocessing children (nipype's workers); SIGKILL what is left
    after ``grace`` seconds. Returns once every child has ended."""
    import logging
    import multiprocessing

    # The pool's pending futures fail once its workers are gone; concurrent.futures would log a
    # traceback for each. That is this stop, not an error.
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(5)


def interrupted() -> bool:
    """A signal arrived while :func:`handle_signals` was active (the call is stopping)."""
    return _STATE["pid"] is not None and _STATE["received"] is not None


def raise_if_interrupted() -> None:
    """Raise the interrupt again if a signal arrived: for code that runs after a library may
    have caught it (nipype's interfaces turn every exception, interrupts too, into a node
    failure and go on with the other nodes)."""
    if interrupted() and os.getpid() == _STATE["pid"]:
        raise _interrupt(_STATE["received"])
