"""Permutation blocks on a Dask cluster (a LocalCluster, SLURM jobs through dask-jobqueue, any scheduler).

:func:`clusterlmer.run.run_permutations` comes here when given a ``client``. Each block of
permutation indices is a Dask task (:func:`clusterlmer.run.dask_worker.fit_block`, which decides
where on the worker it is fitted); finished blocks stream back into the checkpoint, and the
blocks of a worker that dies are rescheduled by Dask on the others (up to
``distributed.scheduler.allowed-failures`` times per block). The task itself is sent as the
result of a small Dask task, not scattered, so that the scheduler can recompute it even if
every worker holding it is lost.
"""

from __future__ import annotations

import time
import uuid
import warnings
from contextlib import contextmanager

from .dask_worker import end_run, fit_block

__all__ = ["check_client", "run_on_dask"]

DASK_HINT = "pip install 'clusterlmer[dask]'"


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


def _identity(x):
    return x


def run_on_dask(task, checkpoint, todo, client, *, split, engine, bar=None, interrupted=lambda: False) -> int:
    """Fit permutations ``todo`` on a Dask cluster, each finished block into ``checkpoint``.

    Parameters
    ----------
    task : object
        Picklable, with ``statistics(k) -> ndarray``.
    checkpoint : clusterlmer.checkpoint.Checkpoint
        Receives each finished block.
    todo : sequence of int
        Permutation indices to fit (not empty).
    client : distributed.Client or str
        The cluster's client, or a scheduler address (connected to, and disconnected at the end).
    split : callable
        ``split(todo, n_threads)`` -> list of blocks of indices (one Dask task each).
    engine : clusterlmer.engines.EngineProperties
        The task's engine: whether its fits run in the Dask worker threads or in a child
        process per worker thread, and how messages name it.
    bar : tqdm progress bar, optional
    interrupted : callable
        True once the user asked to stop (Ctrl-C): the rest is cancelled.

    Returns
    -------
    int
        How many Dask workers or their child processes died (their blocks were fitted again).
    """
    with _connected(client) as connected:
        return _run_on_dask(task, checkpoint, todo, connected, split, engine, bar, interrupted)


def _run_on_dask(task, checkpoint, todo, client, split, engine, bar, interrupted) -> int:
    """:func:`run_on_dask` on a connected client."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]
    n_threads = sum(client.nthreads().values())  # 0 while SLURM jobs are still queued: the largest blocks then
    blocks = [[int(k) for k in block] for block in split(todo, max(1, n_threads))]
    futures, shared = {}, None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")  # the task goes once, on purpose
            shared = client.submit(_identity, task, key=f"clusterlmer-task-{token}", pure=False)
        for i, block in enumerate(blocks):
            futures[client.submit(fit_block, shared, token, i, block, engine, key=f"clusterlmer-perms-{token}-{i}",
                                  pure=False)] = i
        done = as_completed(list(futures), loop=client.loop)  # not the default client: there may be none
        succeeded, child_deaths = set(), 0
        while not done.is_empty():
            batch = done.next_batch(block=False)
            for future in batch:
                if future.status != "finished":
                    _raise_block_error(future, blocks[futures[future]], checkpoint, engine)
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
    return _report_lost(client, token, succeeded, child_deaths, engine)


def _raise_block_error(future, block, checkpoint, engine):
    if future.status == "cancelled":
        raise RuntimeError(f"the Dask scheduler dropped permutations {block[0]}-{block[-1]} (did it restart, or "
                           f"did this client lose its connection?); {checkpoint.unfinished_note()}")
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        raise RuntimeError(
            f"Dask workers died repeatedly while fitting permutations {block[0]}-{block[-1]} (killed, out of "
            f"memory, or a crash in the {engine.label} engine); {checkpoint.unfinished_note()}"
        ) from exc
    future.result()  # raises the block's own error with its traceback


def _end_remote(client, token):
    try:
        try:
            client.run(end_run, token, on_error="ignore")  # workers lost meanwhile have none
        except TypeError:  # distributed before on_error=
            client.run(end_run, token)
    except Exception as exc:  # the cluster is gone: so are its workers' child processes
        warnings.warn(f"could not tell the Dask workers' child processes that the run ended ({exc}).",
                      RuntimeWarning, stacklevel=4)


def _events(client, topic):
    try:
        return [msg for _, msg in client.get_events(topic) if isinstance(msg, dict)]
    except Exception:
        return []


def _report_lost(client, token, succeeded, child_deaths, engine) -> int:
    """Warn about dead workers and child processes during run ``token``; return how many died.

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
        warnings.warn(f"{len(lost)} Dask worker(s) died during the run (killed, out of memory, or a crash in the "
                      f"{engine.label} engine); the {len(held)} block(s) of permutations they held were fitted "
                      "again on the others (the result is unaffected).", RuntimeWarning, stacklevel=4)
    if child_deaths:
        warnings.warn(f"{child_deaths} {engine.label} process(es) on the Dask workers died (a crash in the "
                      f"{engine.label} engine, or killed) and were replaced; their blocks of permutations were "
                      "fitted again (the result is unaffected).", RuntimeWarning, stacklevel=4)
    return len(lost) + child_deaths
