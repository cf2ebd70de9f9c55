"""The Dask side of :mod:`clusterlmer.run.dask`: what a Dask worker process does with a block.

A block of an engine that fits in any thread runs directly in the Dask worker thread, with
numpy's temporaries kept on the heap (:func:`_heap_for_numpy_temporaries`). A block of an
engine that needs its own process (see ``NEEDS_OWN_PROCESS`` in :mod:`clusterlmer.engines`,
e.g. R) is fitted by a child process of the worker, a
:class:`clusterlmer.run.worker_process.WorkerProcess` (the process local ``n_jobs`` workers use),
one per worker thread at a time, which runs the engine in its main thread, alone.

Between runs a child stays up without the task's data, so the next run on the same cluster does
not pay the engine's start-up (R's) again; after ``_CHILD_IDLE_EXIT`` seconds unused it exits by
itself, and it never outlives its Dask worker by more than the fit in progress. A child that dies
is replaced and the block refitted in the same task; a Dask worker that dies is the scheduler's
business (it reschedules the worker's blocks on the others). Start workers with one thread each
(processes = cores): one child, so one R, per core.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import contextmanager

import numpy as np

from .worker_process import WorkerDied, WorkerProcess, batches_of, statistics_of

__all__ = ["fit_block", "end_run"]

# A block whose child process dies every time (e.g. a crash in R on it) must not loop forever.
MAX_CHILD_RESTARTS = 3

_CHILD_IDLE_EXIT = 600.0  # a child unused this long exits
_CHILD_IDLE_REUSE = 300.0  # a worker reuses only children idle for less (so never one that is exiting)
_lock = threading.Lock()
_idle = []  # child processes of this worker process waiting for a block
_children = set()  # every live child of this worker process (idle or busy)
_stopped_runs = set()  # tokens of runs that ended: their blocks must not fit any more


def fit_block(task, token, block, indices, engine):
    """The Dask task: permutations ``indices`` (block number ``block`` of run ``token``) fitted in
    this worker thread or in a child process, as ``engine`` (its EngineProperties) needs.

    Returns ``(indices, statistics, attempt, children that died)``; ``attempt`` names this try
    in the event it logs, so that the client can tell which blocks had to be refitted.
    """
    from distributed import get_worker

    worker = get_worker()
    attempt = uuid.uuid4().hex
    own_process = engine.needs_own_process
    worker.log_event(f"clusterlmer-{token}", {"block": block, "attempt": attempt, "worker": worker.address,
                                              "in": f"{engine.label} process" if own_process else "worker thread"})
    if not own_process:
        return indices, _fit_in_this_thread(task, token, indices), attempt, 0
    values, deaths = _fit_in_child(task, token, indices, engine.label)
    return indices, values, attempt, deaths


def end_run(token):
    """On a worker, when run ``token`` ends (through ``client.run``): its idle children drop its
    task and stay up for the next run; children still busy with it (Ctrl-C, an error) are stopped.
    Returns how many were stopped."""
    with _lock:
        _stopped_runs.add(token)
        busy = [p for p in _children if p.busy_for == token]
        idle = [p for p in _idle if p.token == token]
        for proc in idle:
            _idle.remove(proc)
        for proc in busy:
            _children.discard(proc)
    for proc in busy:
        proc.stop()
    for proc in idle:
        proc.forget()
    with _lock:
        for proc in idle:
            if proc.alive():
                _idle.append(proc)
            else:
                _children.discard(proc)
    return len(busy)


def _check_running(token):
    if token in _stopped_runs:  # Ctrl-C or an error ended the run: stop between permutations
        raise RuntimeError("this clusterlmer run was stopped")


def _fit_in_this_thread(task, token, indices):
    """Permutations ``indices`` fitted directly in this Dask worker thread."""
    values = []
    with _heap_for_numpy_temporaries():
        for batch in batches_of(task, indices):
            _check_running(token)
            values.append(statistics_of(task, batch))
    return np.concatenate(values)


class _Child(WorkerProcess):
    """A child process running blocks for the Dask worker process that started it."""

    def __init__(self):
        super().__init__(idle_exit=_CHILD_IDLE_EXIT)
        self.busy_for = None  # the run whose block it is fitting now
        self.idle_since = time.monotonic()


def _claim_child(token, label):
    """An idle child of this worker process, or a new one, claimed for a block of run ``token``."""
    stale = []
    with _lock:
        while _idle:
            proc = _idle.pop()
            if proc.alive() and time.monotonic() - proc.idle_since < _CHILD_IDLE_REUSE:
                proc.busy_for = token
                break
            _children.discard(proc)
            stale.append(proc)
        else:
            proc = None
    for old in stale:
        old.stop()
    if proc is None:
        proc = _Child()
        proc.busy_for = token
        with _lock:
            _children.add(proc)
    proc.label = f"{label} process of Dask worker {os.getpid()}"  # how its errors name it
    return proc


def _release_child(proc):
    with _lock:
        proc.busy_for = None
        if proc.alive() and proc in _children:
            proc.idle_since = time.monotonic()
            _idle.append(proc)
        else:
            _children.discard(proc)


def _fit_in_child(task, token, indices, label):
    """Permutations ``indices`` fitted by a child of this worker; returns (values, children that died)."""
    deaths = 0
    while True:
        _check_running(token)
        proc = _claim_child(token, label)
        try:
            values = proc.run(token, task, indices)
        except WorkerDied:
            deaths += 1
            if deaths > MAX_CHILD_RESTARTS or token in _stopped_runs:
                raise
            continue
        finally:
            _release_child(proc)
        return values, deaths


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@contextmanager
def _heap_for_numpy_temporaries():
    """Keep numpy's temporaries on the heap during a block, then give the memory back.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
    glibc's mmap threshold at 128 KiB: every temporary array of a numpy engine is then mmap'ed,
    page-faulted and unmapped again, making it ~1.5x slower than in a plain process (measured
    with the native engine: 400 permutations 11.7 s vs 7.8 s). For the block the thresholds are
    raised; afterwards they are set back and ``malloc_trim`` returns the freed memory, as Dask
    intends. No-op where glibc is not the C library.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 128 * 1024))
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest allowed value on 64-bit
    mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)
    try:
        yield
    finally:
        mallopt(_M_TRIM_THRESHOLD, trim)
        mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        malloc_trim(0)
