"""Process-wide settings a job changes while it runs, kept for its host.

A scheduler runs jobs in its own long-lived process: one after another, or several at once in
threads. What a job changes for the whole process — the garbage collector's thresholds and
frozen set, the hook that prints "Exception ignored" — is changed by the first of the jobs
running together and given back by the last, as the host had it — unless the host set its own
meanwhile (a threshold, a hook), which stays. Objects the host freezes while a job runs are
unfrozen with the job's when the last job ends (the collector cannot tell them apart).

glibc's heap, and stderr's descriptor, are changed only in a process the command line owns
(:func:`keep_heap`, :func:`own_stderr`).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

_lock = threading.Lock()

_collector_users = 0
_collector_saved: tuple[tuple[int, ...], tuple[int, ...], bool] = ((), (), False)


@contextmanager
def collector_spared(threshold0: int) -> Iterator[None]:
    """Within the block, what lives when it starts is frozen (skipped by every collection) and
    young collections wait for ``threshold0`` new objects (never fewer than the host's). Objects
    a host froze itself (``gc.freeze``, before forking workers) stay frozen: nothing more is
    frozen then, and nothing is unfrozen after."""
    global _collector_users, _collector_saved
    with _lock:
        if _collector_users == 0:
            thresholds = gc.get_threshold()
            froze = gc.get_freeze_count() == 0
            if froze:
                gc.freeze()
            ours = (max(thresholds[0], threshold0), *thresholds[1:])
            gc.set_threshold(*ours)
            _collector_saved = (thresholds, ours, froze)
        _collector_users += 1
    try:
        yield
    finally:
        with _lock:
            _collector_users -= 1
            if _collector_users == 0:
                thresholds, ours, froze = _collector_saved
                if gc.get_threshold() == ours:  # else the host set its own meanwhile
                    gc.set_threshold(*thresholds)
                if froze:
                    gc.unfreeze()


_ignored: Counter[type[BaseException]] = Counter()
_hook_saved: Any = None


def _hook(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, tuple(_ignored)):
        (_hook_saved or sys.__unraisablehook__)(unraisable)


@contextmanager
def unraisable_ignored(kind: type[BaseException]) -> Iterator[None]:
    """Within the block, an exception of ``kind`` that Python cannot raise (one in a finalizer,
    or a callback from C) is not printed as "Exception ignored"; every other one goes to the
    hook the host has (``sys.unraisablehook``)."""
    global _hook_saved
    with _lock:
        if not _ignored:
            _hook_saved = sys.unraisablehook
            sys.unraisablehook = _hook
        _ignored[kind] += 1
    try:
        yield
    finally:
        with _lock:
            _ignored[kind] -= 1
            if not _ignored[kind]:
                del _ignored[kind]
            if not _ignored and sys.unraisablehook is _hook:
                sys.unraisablehook = _hook_saved


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # malloc.h
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's own defaults
_TRIM_AFTER_S = 3.0
_heap_kept = False
_stderr_owned = False


def own_stderr() -> None:
    """For a process the command line owns: its stderr descriptor may be held back for a moment
    (:func:`batcher.streams.without_rust_panics`). A host's stays the host's: its other
    threads' lines are never delayed or filtered."""
    global _stderr_owned
    _stderr_owned = True


def stderr_owned() -> bool:
    return _stderr_owned


def keep_heap() -> None:
    """For a process the command line owns (never a library host's): glibc gives large arrays
    pages of its heap instead of fresh ones from mmap, and keeps the pages freed for the next.

    On a VM that backs guest memory lazily, the first touch of fresh memory is what a large
    plan pays for most: reused, a tenth-of-a-gigabyte array costs no faults. A 10M-pair job
    reached its first call 0.5-0.8 s sooner, a plan ~0.1 s. Until :func:`lean_heap`: a job that
    sends for hours gives memory back (its peak grew by a tenth when the heap was kept)."""
    global _heap_kept
    if sys.platform != "linux":
        return
    with suppress(AttributeError, OSError):  # glibc only
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        _heap_kept = True


def lean_heap() -> None:
    """After :func:`keep_heap`, once a job is planned and stored: large arrays get pages of their
    own again, and what the heap holds free goes back to the system a few seconds later, while
    calls are out (it holds glibc's lock for a tenth of a second after a 10M-pair plan: not
    before the first call). Else nothing (a library host's heap is the host's)."""
    global _heap_kept
    with _lock:
        if not _heap_kept:
            return
        _heap_kept = False
    with suppress(AttributeError, OSError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        trim = threading.Timer(_TRIM_AFTER_S, libc.malloc_trim, (0,))
        trim.daemon = True
        trim.start()
