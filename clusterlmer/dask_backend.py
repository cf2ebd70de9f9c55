"""Permutation blocks on a Dask cluster (a LocalCluster, SLURM jobs through dask-jobqueue, any scheduler).

:func:`clusterlmer.parallel.run_permutations` comes here when given a ``client``. Blocks of
permutation indices are Dask tasks; finished blocks stream back into the checkpoint, and the
blocks of a worker that dies are rescheduled by Dask on the others.

Where the fits run on a Dask worker depends on the engine:

* **native** (numpy only, no R): directly in the Dask worker thread that runs the block.
* **R** (and any task that does not say it is native): in a child process of the worker.
  A Dask worker runs tasks in a thread pool, never in its main thread, and R must not be used
  that way. With rpy2 3.5.17 in LocalCluster(processes=True, threads_per_worker=1) workers: R
  starts with the warning "R is not initialized by the main thread" (R takes over SIGINT there
  for good), and the worker's *second* task fails with "Conversion rules for `rpy2.robjects`
  appear to be missing": rpy2 keeps its converters in a ContextVar and Dask runs every task in
  a fresh copy of the context. Even patched up, R would share the worker process with Dask's
  event-loop thread, and a worker with several threads would call R concurrently.
  multiprocessing (a ProcessPoolExecutor in the worker) is no way out either: the nanny starts
  workers as daemonic processes, which may not have multiprocessing children.

So every Dask worker thread that fits R permutations drives one child process of its own, a
:class:`clusterlmer.worker_process.WorkerProcess` (the process local ``n_jobs`` workers use), which
runs R in its main thread, alone. Between runs it stays up without the task's data, so the next
run on the same cluster does not pay R's start-up again; after ``_R_IDLE_EXIT`` seconds unused
it exits by itself, and it never outlives its Dask worker by more than the fit in progress. A
child that dies (a crash in R) is replaced and the block refitted in the same task; a worker that
dies is Dask's business: the scheduler reschedules its blocks on other workers (up to
``distributed.scheduler.allowed-failures`` times per block). The task itself is sent as the
result of a small Dask task, not scattered, so the scheduler can recompute it even if every
worker holding it is lost. Start workers with one thread each (processes = cores): one R per core.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from contextlib import contextmanager

import numpy as np

from .worker_process import WorkerDied, WorkerProcess

__all__ = ["check_client", "run_on_dask"]

DASK_HINT = "pip install 'clusterlmer[dask]'"
# A block whose R process dies every time (e.g. R crashing on it) must not loop forever.
MAX_R_RESTARTS = 3

_R_IDLE_EXIT = 600.0  # an R child unused this long exits
_R_IDLE_REUSE = 300.0  # a worker reuses only children idle for less (so never one that is exiting)
_r_lock = threading.Lock()
_r_idle = []  # R child processes of this worker process waiting for a block
_r_all = set()  # every live R child of this worker process (idle or busy)
_stopped_runs = set()  # tokens of runs that ended: their blocks must not fit any more


def check_client(client, n_jobs=1):
    """Check ``client`` before any work is done.

    Parameters
    ----------
    client : distributed.Client, str or None
        A client, a scheduler address such as ``"tcp://host:8786"``, or None (no Dask).
    n_jobs : int
        Local worker processes asked for: must be 1 with a client.

    Raises
    ------
    ImportError
        Dask's distributed package is missing.
    TypeError, ValueError
        ``client`` is of another type, or ``n_jobs`` is not 1 with a client.
    """
    if client is None:
        return
    try:
        import distributed
    except ImportError:
        raise ImportError(f"client= needs Dask's distributed package: {DASK_HINT}") from None
    if not isinstance(client, (str, distributed.Client)):
        raise TypeError(f"client must be a dask.distributed Client or a scheduler address such as "
                        f"'tcp://host:8786', got {type(client).__name__}.")
    if n_jobs != 1:
        raise ValueError(f"n_jobs={n_jobs} asks for local worker processes, but with client= the Dask workers "
                         "fit the permutations; leave n_jobs=1 (size the Dask cluster instead).")


@contextmanager
def _connected(client):
    """The client itself, or a connection to the scheduler address (closed afterwards)."""
    if not isinstance(client, str):
        yield client
        return
    from distributed import Client

    connection = Client(client, set_as_default=False)
    try:
        yield connection
    finally:
        connection.close()


class _RProcess(WorkerProcess):
    """A child process with its own R, running blocks for the Dask worker process that started it."""

    def __init__(self):
        super().__init__(idle_exit=_R_IDLE_EXIT, label=f"R process of Dask worker {os.getpid()}")
        self.busy_for = None  # the run whose block it is fitting now
        self.idle_since = time.monotonic()


def _r_process(token):
    """An idle R child of this worker process, or a new one, claimed for a block of run ``token``."""
    stale = []
    with _r_lock:
        while _r_idle:
            proc = _r_idle.pop()
            if proc.alive() and time.monotonic() - proc.idle_since < _R_IDLE_REUSE:
                proc.busy_for = token
                break
            _r_all.discard(proc)
            stale.append(proc)
        else:
            proc = None
    for old in stale:
        old.stop()
    if proc is None:
        proc = _RProcess()
        proc.busy_for = token
        with _r_lock:
            _r_all.add(proc)
    return proc


def _r_process_done(proc):
    with _r_lock:
        proc.busy_for = None
        if proc.alive() and proc in _r_all:
            proc.idle_since = time.monotonic()
            _r_idle.append(proc)
        else:
            _r_all.discard(proc)


def _end_run(token):
    """On a worker, when run ``token`` ends (through ``client.run``): its idle R children drop its
    task and stay up for the next run; children still busy with it (Ctrl-C, an error) are stopped."""
    with _r_lock:
        _stopped_runs.add(token)
        busy = [p for p in _r_all if p.busy_for == token]
        idle = [p for p in _r_idle if p.token == token]
        for proc in idle:
            _r_idle.remove(proc)
        for proc in busy:
            _r_all.discard(proc)
    for proc in busy:
        proc.stop()
    for proc in idle:
        proc.forget()
    with _r_lock:
        for proc in idle:
            if proc.alive():
                _r_idle.append(proc)
            else:
                _r_all.discard(proc)
    return len(busy)


def _identity(x):
    return x


def _needs_r_process(task):
    """Whether ``task``'s fits must run in an R child process.

    Only a task that says it fits with the native engine (numpy only) runs in the Dask worker
    thread; any other (the R engine, a wrapper without ``engine``) takes the safe side.
    """
    return getattr(task, "engine", "r") != "native"


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@contextmanager
def _heap_for_numpy_temporaries():
    """Keep numpy's temporaries on the heap during a native block, then give the memory back.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
    freezes glibc's mmap threshold at 128 KiB: every temporary array of the
    native engine is then mmap'ed, page-faulted and unmapped again, making it
    ~1.5x slower than in a plain process (measured: 400 permutations 11.7 s vs
    7.8 s). For the block the thresholds are raised; afterwards they are set
    back and ``malloc_trim`` returns the freed memory, as Dask intends.
    No-op where glibc is not the C library.
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


def _fit_in_this_thread(task, token, indices):
    """Permutations ``indices`` fitted directly in this Dask worker thread (no R involved)."""
    values = []
    with _heap_for_numpy_temporaries():
        for k in indices:
            if token in _stopped_runs:  # Ctrl-C or an error ended the run: stop between permutations
                raise RuntimeError("this clusterlmer run was stopped")
            values.append(task.statistics(k))
    return np.stack(values)


def _fit_in_r_process(task, token, indices):
    """Permutations ``indices`` fitted by an R child of this worker; returns (values, R processes that died)."""
    deaths = 0
    while True:
        if token in _stopped_runs:
            raise RuntimeError("this clusterlmer run was stopped")
        proc = _r_process(token)
        try:
            values = proc.run(token, task, indices)
        except WorkerDied:
            deaths += 1
            if deaths > MAX_R_RESTARTS or token in _stopped_runs:
                raise
            continue
        finally:
            _r_process_done(proc)
        return values, deaths


def _dask_block(task, token, block, indices):
    """A Dask task: permutations ``indices`` fitted in this worker thread (native) or its R process."""
    from distributed import get_worker

    worker = get_worker()
    attempt = uuid.uuid4().hex
    in_r = _needs_r_process(task)
    # Lets the client tell afterwards which blocks had to be refitted (a worker died on them), and
    # where each block ran.
    worker.log_event(f"clusterlmer-{token}", {"block": block, "attempt": attempt, "worker": worker.address,
                                              "in": "R process" if in_r else "worker thread"})
    if not in_r:
        return indices, _fit_in_this_thread(task, token, indices), attempt, 0
    values, deaths = _fit_in_r_process(task, token, indices)
    return indices, values, attempt, deaths


def run_on_dask(task, checkpoint, todo, client, *, split, bar=None, interrupted=lambda: False) -> int:
    """Fit permutations ``todo`` on a Dask cluster, each finished block into ``checkpoint``.

    Parameters
    ----------
    task : object
        Picklable, with ``statistics(k) -> ndarray``; ``engine == "native"`` runs its fits in
        the Dask worker threads, anything else in an R child process per worker thread.
    checkpoint : clusterlmer.checkpoint.Checkpoint
        Receives each finished block.
    todo : sequence of int
        Permutation indices to fit (not empty).
    client : distributed.Client or str
        The cluster's client, or a scheduler address (connected to, and disconnected at the end).
    split : callable
        ``split(todo, n_threads)`` -> list of blocks of indices (one Dask task each).
    bar : tqdm progress bar, optional
    interrupted : callable
        True once the user asked to stop (Ctrl-C): the rest is cancelled.

    Returns
    -------
    int
        How many Dask workers or R processes died (their blocks were fitted again).
    """
    with _connected(client) as connected:
        return _run_on_dask(task, checkpoint, todo, connected, split, bar, interrupted)


def _run_on_dask(task, checkpoint, todo, client, split, bar, interrupted) -> int:
    """:func:`run_on_dask` on a connected client."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]
    n_threads = sum(client.nthreads().values())  # 0 while SLURM jobs are still queued: blocks of 8 then
    blocks = [[int(k) for k in block] for block in split(todo, max(1, n_threads))]
    futures, shared = {}, None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")  # the task goes once, on purpose
            shared = client.submit(_identity, task, key=f"clusterlmer-task-{token}", pure=False)
        for i, block in enumerate(blocks):
            futures[client.submit(_dask_block, shared, token, i, block, key=f"clusterlmer-perms-{token}-{i}",
                                  pure=False)] = i
        done = as_completed(list(futures), loop=client.loop)  # not the default client: there may be none
        succeeded, child_deaths = set(), 0
        while not done.is_empty():
            batch = done.next_batch(block=False)
            for future in batch:
                if future.status != "finished":
                    _raise_block_error(future, blocks[futures[future]], checkpoint)
                indices, values, attempt, deaths = future.result()
                checkpoint.add(indices, values)
                succeeded.add(attempt)
                child_deaths += deaths
                future.release()
                if bar is not None:
                    bar.update(len(indices))
            if interrupted():
                raise KeyboardInterrupt
            if not batch:
                time.sleep(0.05)
    except BaseException:
        try:
            client.cancel(list(futures) + ([shared] if shared is not None else []))
        finally:
            _end_remote(client, token)
        raise
    shared.release()
    _end_remote(client, token)
    return _report_lost(client, token, succeeded, child_deaths)


def _raise_block_error(future, block, checkpoint):
    n_left = int((~checkpoint.done).sum())
    kept = "kept in the checkpoint: rerun to resume" if checkpoint.path else "lost: use checkpoint= to keep them"
    if future.status == "cancelled":
        raise RuntimeError(f"the Dask scheduler dropped permutations {block[0]}-{block[-1]} (did it restart, or "
                           f"did this client lose its connection?); {n_left} permutations are not done. "
                           f"Finished permutations are {kept}.")
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        raise RuntimeError(
            f"Dask workers died repeatedly while fitting permutations {block[0]}-{block[-1]} (killed, out of "
            f"memory, or a crash in R); {n_left} permutations are not done. Finished permutations are {kept}."
        ) from exc
    future.result()  # raises the block's own error with its traceback


def _end_remote(client, token):
    try:
        try:
            client.run(_end_run, token, on_error="ignore")  # workers lost meanwhile have none
        except TypeError:  # distributed before on_error=
            client.run(_end_run, token)
    except Exception as exc:  # the cluster is gone: so are the R processes
        warnings.warn(f"could not tell the Dask workers' R processes that the run ended ({exc}).", RuntimeWarning, stacklevel=4)


def _events(client, topic):
    try:
        return [msg for _, msg in client.get_events(topic) if isinstance(msg, dict)]
    except Exception:
        return []


def _report_lost(client, token, succeeded, child_deaths) -> int:
    """Warn about dead workers and R processes during run ``token``; return how many died.

    Two witnesses, as either may miss a death: the scheduler's "remove-worker" events list the
    blocks a lost worker held, and each block attempt announced itself with an event (a worker
    killed within milliseconds of starting a block may not have sent it).
    """
    prefix = f"clusterlmer-perms-{token}-"
    lost, held = set(), set()
    for msg in _events(client, "all"):
        if msg.get("action") != "remove-worker" or msg.get("expected"):
            continue
        ours = {str(k) for k in msg.get("processing-tasks") or () if str(k).startswith(prefix)}
        if ours:
            lost.add(msg.get("worker") or min(ours))
            held |= ours
    failed = [msg for msg in _events(client, f"clusterlmer-{token}") if msg.get("attempt") not in succeeded]
    lost |= {msg.get("worker") for msg in failed}
    held |= {f"{prefix}{msg.get('block')}" for msg in failed}
    if lost:
        warnings.warn(f"{len(lost)} Dask worker(s) died during the run (killed, out of memory, or a crash in R); "
                      f"the {len(held)} block(s) of permutations they held were fitted again on the others (the "
                      "result is unaffected).", RuntimeWarning, stacklevel=4)
    if child_deaths:
        warnings.warn(f"{child_deaths} R process(es) on the Dask workers died (a crash in R, or killed) and were "
                      "replaced; their blocks of permutations were fitted again (the result is unaffected).",
                      RuntimeWarning, stacklevel=4)
    return len(lost) + child_deaths
