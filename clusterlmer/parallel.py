"""Running permutation fits: in this process, in local worker processes, or on Dask workers.

R is single-threaded and not thread-safe, so local parallel work goes to worker processes
of the package's own (:mod:`clusterlmer.worker_process`): ``python -c`` children of this
interpreter that never re-import the caller's ``__main__``, so a plain script needs no
``if __name__ == "__main__":`` guard. Each gets the task once and then blocks of permutation
indices; with the R engine it starts its own R on its first fit, with the native engine it
never loads R. A worker that dies has its block refitted in a fresh one; workers end with
their parent. The Dask path (``client=``) lives in :mod:`clusterlmer.dask_backend`. The
permutations are drawn in the parent before any split, and each permutation's fit is
deterministic, so the result does not depend on the number of workers, nor on where they run
(local processes, a Dask cluster, SLURM jobs through dask-jobqueue).
"""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
import threading
import uuid
import warnings
from collections import deque
from contextlib import contextmanager

import numpy as np

from . import dask_backend, worker_process
from ._checks import option_hint
from .dask_backend import check_client  # re-exported: analysis checks clients through here
from .worker_process import WorkerDied, WorkerProcess, stop_all

__all__ = ["run_permutations", "resolve_n_jobs", "available_cores", "check_client"]

# A block that kills its worker every time (e.g. R crashing on it) must not loop forever.
MAX_WORKER_RESTARTS = 3


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, SLURM, containers) where the OS has one."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_n_jobs(n_jobs) -> int:
    """``n_jobs`` as a worker count: -1 means every core (MNE/joblib convention).

    More workers than cores are capped at the cores, with a warning: they would only take turns
    on the cores, each holding its own copy of the data (and, with the R engine, an R session).
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive number of worker processes or -1 for all cores, got {n_jobs!r}.")
    cores = available_cores()
    if n_jobs > cores:
        asked = option_hint(f"n_jobs={n_jobs}", f"--jobs {n_jobs}")
        warnings.warn(f"{asked} asks for {n_jobs} worker processes, but this process may use {cores} core(s): "
                      f"using {cores} workers (more would only take turns on the cores, each with its own copy "
                      "of the data and, with the R engine, its own R session).", UserWarning, stacklevel=3)
        return cores
    return cores if n_jobs == -1 else int(n_jobs)


@contextmanager
def _interrupt_between_permutations():
    """Turn Ctrl-C into a flag checked between permutations.

    A KeyboardInterrupt raised while R runs surfaces inside rpy2's event
    callback, where it is printed and swallowed, and the run goes on. With
    this handler the first Ctrl-C stops the run after the permutation in
    progress (its result is kept); a second one interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _blocks(todo, n_jobs, max_size=8):
    # Small blocks keep every worker busy to the end and bound the work lost
    # with a worker; each block still amortises the transfer of its results.
    size = int(np.clip(len(todo) // (4 * n_jobs), 1, max_size))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _block_splitter(task):
    """``split(todo, n_jobs)`` for this task's engine.

    Eight permutations of the R engine are ~25 s of fitting on the 2-way sample;
    eight of the native engine ~0.15 s, too little to pay for a Dask task or a
    worker round trip, so native blocks may hold up to 256 (a few seconds).
    """
    max_size = 256 if getattr(task, "engine", "r") == "native" else 8
    return functools.partial(_blocks, max_size=max_size)


def _progress_bar(total, initial, enabled):
    show = enabled and sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, never a reason to fail
        show = False
    if not show:
        return None
    return tqdm(total=total, initial=initial, unit="perm", desc="permutations", file=sys.stderr)


def run_permutations(task, checkpoint, *, n_jobs=1, progress=True, client=None):
    """Fit every permutation the checkpoint does not hold yet.

    Parameters
    ----------
    task : object
        Has ``statistics(k) -> ndarray`` giving permutation ``k``'s statistics;
        must be picklable when ``n_jobs > 1`` or with a ``client``.
    checkpoint : clusterlmer.checkpoint.Checkpoint
        Receives each finished block (and saves it when due).
    n_jobs : int
        Worker processes; 1 runs in this process. Must be 1 with a ``client``.
    progress : bool
        Show a progress bar on a terminal.
    client : distributed.Client or str, optional
        Fit the blocks on this Dask cluster's workers (a scheduler address is
        connected to, and that connection closed at the end).

    Returns
    -------
    int
        How many times dead workers were replaced (their blocks refitted).
    """
    todo = checkpoint.todo
    restarts = 0
    bar = _progress_bar(checkpoint.n_permutations, checkpoint.n_permutations - len(todo), progress)
    try:
        with _interrupt_between_permutations() as interrupted:
            if client is not None:
                if len(todo):
                    restarts = dask_backend.run_on_dask(task, checkpoint, todo, client, split=_block_splitter(task),
                                                        bar=bar, interrupted=interrupted)
            elif n_jobs == 1 or len(todo) <= 1:
                for k in todo:
                    checkpoint.add([k], task.statistics(k)[None])
                    if bar is not None:
                        bar.update(1)
                    if interrupted():
                        raise KeyboardInterrupt
            else:
                restarts = _run_in_workers(task, checkpoint, todo, n_jobs, bar, interrupted)
    finally:
        checkpoint.save()
        if bar is not None:
            bar.close()
    return restarts


def _run_in_workers(task, checkpoint, todo, n_jobs, bar, interrupted) -> int:
    """Fit blocks of permutations in worker processes; returns how many workers died (and were replaced)."""
    blocks = deque(_block_splitter(task)(todo, n_jobs))
    payload = worker_process.dumps(task)  # pickled once, sent once to each worker
    token = uuid.uuid4().hex[:12]
    workers = [WorkerProcess(label="local worker process") for _ in range(min(n_jobs, len(blocks)))]
    busy = {}  # worker -> the block it is fitting
    restarts = 0

    def replace(worker, block, died):
        nonlocal restarts
        restarts += 1
        blocks.appendleft(block)
        workers[workers.index(worker)] = WorkerProcess(label="local worker process")
        n_left = int((~checkpoint.done).sum())
        if restarts > MAX_WORKER_RESTARTS:
            raise RuntimeError(
                f"worker processes died {restarts} times (killed, out of memory, or a crash in R); "
                f"{n_left} permutations are not done. Finished permutations are "
                f"{'kept in the checkpoint: rerun to resume' if checkpoint.path else 'lost: use checkpoint= to keep them'}."
            ) from died
        warnings.warn(f"a worker process died (killed, out of memory, or a crash in R); refitting its "
                      f"{len(block)} unfinished permutations in a fresh worker (restart {restarts}).",
                      RuntimeWarning, stacklevel=4)

    try:
        while blocks or busy:
            for worker in list(workers):
                if worker not in busy and blocks:
                    block = blocks.popleft()
                    try:
                        worker.send(token, payload, block)
                        busy[worker] = block
                    except WorkerDied as died:
                        replace(worker, block, died)
            ready = select.select(list(busy), [], [], 0.5)[0] if busy else []
            for worker in ready:
                block = busy.pop(worker)
                try:
                    values = worker.receive()
                except WorkerDied as died:
                    replace(worker, block, died)
                    continue
                checkpoint.add(block, values)
                if bar is not None:
                    bar.update(len(block))
            if interrupted():
                raise KeyboardInterrupt
    finally:
        # Blocks in flight are lost anyway: busy workers are stopped, not waited for.
        stop_all(workers)
    return restarts
