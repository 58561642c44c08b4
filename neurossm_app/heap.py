"""The garbage collector kept off the objects that exist before a long step."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Move every tracked object to the permanent generation for the duration of the block.

    nipype's MultiProc runs a full ``gc.collect()`` before each submission, and nilearn one per
    image it reads (``safe_get_data``: every glass brain, every atlas read). With pybids, pandas,
    nipype or torch loaded, the heap holds some 300,000 objects and each collection takes
    0.2-1 s: a 4-class group report took 29-30 s, and 15-20 s with the heap frozen
    (docs/performance.md, "Test suite"). Frozen objects are skipped by collections, in forked workers too; the
    process gets them back, collectable again, when the block ends, even on an exception.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
