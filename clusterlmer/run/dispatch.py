"""Running a checkpoint's missing permutations: in this process, in local workers, or on Dask.

The permutations are drawn in the parent before any split, and each permutation's fit is
deterministic, so the result does not depend on the number of workers, nor on where they run
(local processes, a Dask cluster, SLURM jobs through dask-jobqueue). Blocks are as large as the
task's engine allows (``BLOCK_SIZE``, :func:`clusterlmer.engines.engine_properties`).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from contextlib import contextmanager

import numpy as np

from ..engines import engine_properties
from .dask import run_on_dask
from .local import run_in_workers
from .worker_process import batches_of, statistics_of

__all__ = ["run_permutations"]


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


def _blocks(todo, n_jobs, max_size, task=None):
    # Small blocks keep every worker busy to the end and bound the work lost
    # with a worker; each block still amortises the transfer of its results.
    # Blocks are made of whole batches of the task (fitted together).
    size = int(np.clip(len(todo) // (4 * n_jobs), 1, max_size))
    batches = batches_of(task, todo)
    blocks, current = [], []
    for batch in batches:
        if current and len(current) + len(batch) > size:
            blocks.append(current)
            current = []
        current = current + batch
    return blocks + ([current] if current else [])


def _block_splitter(task):
    """``split(todo, n_jobs)`` with the block size of ``task``'s engine, in whole batches of ``task``."""
    max_size = engine_properties(getattr(task, "engine", None)).block_size
    return functools.partial(_blocks, max_size=max_size, task=task)


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
        Has ``statistics(k) -> ndarray`` giving permutation ``k``'s statistics, and ``engine``,
        the name of the engine that fits it (a task without one is run as
        :data:`clusterlmer.engines.CAUTIOUS_ENGINE`'s); must be picklable when ``n_jobs > 1`` or
        with a ``client``.
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
    engine = engine_properties(getattr(task, "engine", None))
    split = _block_splitter(task)
    bar = _progress_bar(checkpoint.n_permutations, checkpoint.n_permutations - len(todo), progress)
    try:
        with _interrupt_between_permutations() as interrupted:
            if client is not None:
                if len(todo):
                    restarts = run_on_dask(task, checkpoint, todo, client, split=split, engine=engine, bar=bar,
                                           interrupted=interrupted)
            elif n_jobs == 1 or len(todo) <= 1:
                for batch in batches_of(task, todo):
                    checkpoint.add(batch, statistics_of(task, batch))
                    if bar is not None:
                        bar.update(len(batch))
                    if interrupted():
                        raise KeyboardInterrupt
            else:
                restarts = run_in_workers(task, checkpoint, todo, n_jobs, split=split, engine=engine, bar=bar,
                                          interrupted=interrupted)
    finally:
        checkpoint.save()
        if bar is not None:
            bar.close()
    return restarts
