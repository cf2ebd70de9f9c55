"""Local worker processes (``n_jobs``): how many, and the loop that feeds them blocks.

R is single-threaded and not thread-safe, so local parallel work runs in processes: the
package's own (:mod:`clusterlmer.run.worker_process`), ``python -c`` children of this
interpreter that never re-import the caller's ``__main__``, so a plain script needs no
``if __name__ == "__main__":`` guard. Each gets the task once, then blocks of permutation
indices; an engine that needs R starts it in the worker on its first fit, and numpy-only
engines never load R. A worker that dies has its block refitted in a fresh one; workers end
with their parent.
"""

from __future__ import annotations

import os
import select
import uuid
import warnings
from collections import deque

import numpy as np

from .._checks import option_hint
from .worker_process import WorkerDied, WorkerProcess, dumps, stop_all

__all__ = ["available_cores", "resolve_n_jobs", "run_in_workers"]

# A block that kills its worker every time (e.g. a crash in R on it) must not loop forever.
MAX_WORKER_RESTARTS = 3
_LABEL = "local worker process"


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


def run_in_workers(task, checkpoint, todo, n_jobs, *, split, engine, bar=None, interrupted=lambda: False) -> int:
    """Fit permutations ``todo`` in ``n_jobs`` worker processes, each finished block into ``checkpoint``.

    Parameters
    ----------
    n_jobs : int
        Worker processes (at most one per block).
    task, checkpoint, todo, split, engine, bar, interrupted
        As for :func:`clusterlmer.run.dask.run_on_dask`; ``split(todo, n_jobs)`` gives the blocks,
        and ``engine`` is only named in messages about dead workers.

    Returns
    -------
    int
        How many workers died (and were replaced, their blocks refitted).
    """
    blocks = deque(split(todo, n_jobs))
    payload = dumps(task)  # pickled once, sent once to each worker
    token = uuid.uuid4().hex[:12]
    workers = [WorkerProcess(label=_LABEL) for _ in range(min(n_jobs, len(blocks)))]
    busy = {}  # worker -> the block it is fitting
    restarts = 0
    why = f"killed, out of memory, or a crash in the {engine.label} engine"

    def replace(worker, block, died):
        nonlocal restarts
        restarts += 1
        blocks.appendleft(block)
        workers[workers.index(worker)] = WorkerProcess(label=_LABEL)
        if restarts > MAX_WORKER_RESTARTS:
            message = f"worker processes died {restarts} times ({why}); {checkpoint.unfinished_note()}"
            raise RuntimeError(message) from died
        warnings.warn(f"a worker process died ({why}); refitting its {len(block)} unfinished permutations in a "
                      f"fresh worker (restart {restarts}).", RuntimeWarning, stacklevel=4)

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
