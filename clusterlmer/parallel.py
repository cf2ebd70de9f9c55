"""Running permutation fits: in this process, in worker processes, or on Dask workers.

R is single-threaded and not thread-safe, so parallel work goes to separate
processes, each with its own embedded R (started on its first fit). The
permutations are drawn in the parent before any split, and each
permutation's fit is deterministic, so the result does not depend on the
number of workers, nor on where they run (local processes, a Dask cluster,
SLURM jobs through dask-jobqueue).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import numpy as np

__all__ = ["run_permutations", "resolve_n_jobs", "check_client"]

DASK_HINT = "pip install 'clusterlmer[dask]'"

_worker_task = None
# A block that kills its worker every time (e.g. R crashing on it) must not loop forever.
MAX_WORKER_RESTARTS = 3


def resolve_n_jobs(n_jobs) -> int:
    """``n_jobs`` as a worker count: -1 means every core (MNE/joblib convention)."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive number of worker processes or -1 for all cores, got {n_jobs!r}.")
    return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)


def _init_worker(task):
    global _worker_task
    _worker_task = task
    # Ctrl-C reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def _run_block(indices):
    return indices, np.stack([_worker_task.statistics(k) for k in indices])


def _blocks(todo, n_jobs):
    # Small blocks keep every worker busy to the end and bound the work lost
    # with a worker; each block still amortises the transfer of its results.
    size = int(np.clip(len(todo) // (4 * n_jobs), 1, 8))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


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
                    with _connected(client) as connected:
                        restarts = _run_on_dask(task, checkpoint, todo, connected, bar, interrupted)
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


def _stop(pool):
    # Blocks in flight are lost anyway: stop the workers instead of waiting for them.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_in_workers(task, checkpoint, todo, n_jobs, bar, interrupted) -> int:
    """Fit blocks of permutations in worker processes; returns how many times workers were replaced."""
    ctx = multiprocessing.get_context("spawn")  # a fork would copy the parent's R state
    remaining = {tuple(block) for block in _blocks(todo, n_jobs)}
    restarts = 0
    while remaining:
        pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker,
                                   initargs=(task,))
        broken = False
        try:
            futures = {pool.submit(_run_block, list(block)): block for block in remaining}
            pending = set(futures)
            while pending and not broken:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        indices, values = future.result()
                    except BrokenProcessPool:
                        broken = True  # a worker died (killed, or R crashed): its block is unknown
                        continue
                    checkpoint.add(indices, values)
                    remaining.discard(futures[future])
                    if bar is not None:
                        bar.update(len(indices))
                if interrupted():
                    raise KeyboardInterrupt
        except BaseException:
            _stop(pool)
            raise
        if not broken:
            pool.shutdown(wait=True)
            break
        _stop(pool)
        restarts += 1
        n_left = sum(len(b) for b in remaining)
        if restarts > MAX_WORKER_RESTARTS:
            raise RuntimeError(
                f"worker processes died {restarts} times (killed, out of memory, or a crash in R); "
                f"{n_left} permutations are not done. Finished permutations are "
                f"{'kept in the checkpoint: rerun to resume' if checkpoint.path else 'lost: use checkpoint= to keep them'}."
            )
        warnings.warn(f"a worker process died (killed, out of memory, or a crash in R); refitting the "
                      f"{n_left} unfinished permutations in fresh workers (restart {restarts}).",
                      RuntimeWarning, stacklevel=3)
    return restarts


# ---------------------------------------------------------------------------------------------
# Dask (and SLURM through dask-jobqueue)
#
# Where R runs on a Dask worker. A Dask worker runs tasks in a thread pool, never in its main
# thread, and R must not be used that way. With rpy2 3.5.17 in LocalCluster(processes=True,
# threads_per_worker=1) workers: R starts with the warning "R is not initialized by the main
# thread" (R takes over SIGINT there for good), and the worker's *second* task fails with "Conversion
# rules for `rpy2.robjects` appear to be missing": rpy2 keeps its converters in a ContextVar and
# Dask runs every task in a fresh copy of the context. Even patched up, R would share the worker
# process with Dask's event-loop thread, and a worker with several threads would call R
# concurrently. multiprocessing (a ProcessPoolExecutor in the worker) is no way out either: the
# nanny starts workers as daemonic processes, which may not have multiprocessing children.
#
# So every Dask worker thread that fits permutations drives one plain child process
# (subprocess.Popen of this interpreter) that runs R in its main thread, alone, exactly as the
# n_jobs workers do. The child receives the task once per run (and the worker's sys.path), then
# blocks of permutation indices over its stdin, and answers on its stdout, both length-prefixed
# pickles (R's own console output is redirected to stderr, the worker's log). It ignores Ctrl-C
# (the client decides what stops), and it exits on end-of-file, so it never outlives its worker by
# more than the block in progress. Between runs it stays up without the task's data, so the next
# run on the same cluster does not pay R's start-up again; after _R_IDLE_EXIT seconds unused it
# exits by itself. A child that dies (a crash in R) is replaced and the block
# refitted in the same task; a worker that dies is Dask's business: the scheduler reschedules its
# blocks on other workers (up to distributed.scheduler.allowed-failures times per block). The task
# itself is sent as the result of a small Dask task, not scattered, so the scheduler can recompute
# it even if every worker holding it is lost. The same code runs on SLURMCluster workers (Dask
# workers in SLURM jobs); start them with one thread each (processes = cores) for one R per core.
# ---------------------------------------------------------------------------------------------

_R_CHILD = "from clusterlmer.parallel import _serve_r; _serve_r()"
_R_IDLE_EXIT = 600.0  # an R child unused this long exits
_R_IDLE_REUSE = 300.0  # a worker reuses only children idle for less (so never one that is exiting)
_r_lock = threading.Lock()
_r_idle = []  # R child processes of this worker process waiting for a block
_r_all = set()  # every live R child of this worker process (idle or busy)
_r_stopped = set()  # tokens of runs that ended: their blocks must not start children any more


def check_client(client, n_jobs=1):
    """Check ``client`` (a ``distributed.Client``, a scheduler address or None) before any work."""
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


def _write_message(fd, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack("<Q", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, size):
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd, timeout=None):
    """The next message; None at end of file (the other side is gone) or after ``timeout`` s of silence."""
    if timeout is not None and not select.select([fd], [], [], timeout)[0]:
        return None
    head = _read_exact(fd, 8)
    if head is None:
        return None
    data = _read_exact(fd, struct.unpack("<Q", head)[0])
    return None if data is None else pickle.loads(data)


def _serve_r():
    """Main loop of an R child process.

    Reads ``(token, sys.path, task or None, indices)``: a task replaces the one held; ``indices``
    None drops it (the run is over) and gets no answer; otherwise answers ``("ok", statistics)``
    or ``("error", exception, traceback)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)  # whatever R or Python prints goes to stderr, never into the replies
    task = None
    while True:
        try:
            message = _read_message(requests, timeout=_R_IDLE_EXIT)
            if message is None:
                return
        except Exception as exc:  # a message that does not unpickle; the stream is still in step
            message = exc
        try:
            if isinstance(message, Exception):
                raise message
            _token, path, payload, indices = message
            if payload is not None:
                for entry in reversed(path):
                    if entry not in sys.path:
                        sys.path.insert(0, entry)
                task = pickle.loads(payload)
            if indices is None:
                task = None
                continue
            reply = ("ok", np.stack([task.statistics(k) for k in indices]))
        except Exception as exc:
            import traceback

            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
                reply = ("error", exc, text)
            except Exception:
                reply = ("error", RuntimeError(text), text)
        try:
            _write_message(replies, reply)
        except OSError:
            return


class _RProcessDied(RuntimeError):
    pass


class _RProcess:
    """A child process with its own R, running blocks for the Dask worker process that started it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _R_CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.token = None  # the run whose task the child holds
        self.busy_for = None  # the run whose block it is fitting now
        self.idle_since = time.monotonic()

    def alive(self):
        return self.proc.poll() is None

    def run(self, token, task, indices):
        payload = None
        if self.token != token:
            import cloudpickle  # as Dask itself: tasks defined in __main__ or interactively pickle too

            payload = cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        self.token = token
        try:
            _write_message(self.proc.stdin.fileno(), (token, list(sys.path), payload, list(indices)))
            reply = _read_message(self.proc.stdout.fileno())
        except (OSError, ValueError):  # ValueError: stopped meanwhile (its pipes closed)
            reply = None
        if reply is None:
            self.stop()
            raise _RProcessDied(f"the R process (pid {self.proc.pid}) died with exit code {self.proc.returncode}")
        if reply[0] == "error":
            if payload is not None:
                self.token = None  # the task may not have arrived: send it again with the next block
            exc, text = reply[1], reply[2]
            if hasattr(exc, "add_note"):
                exc.add_note(f"In the R process of Dask worker {os.getpid()}:\n{text}")
            raise exc
        return reply[1]

    def forget(self):
        """Drop the run's task (its data) from the child's memory; the child and its R stay up."""
        try:
            _write_message(self.proc.stdin.fileno(), (None, None, None, None))
        except (OSError, ValueError):
            self.stop()
        self.token = None

    def stop(self):
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        for how in (None, self.proc.terminate, self.proc.kill):
            if how is not None:
                how()
            try:
                self.proc.wait(timeout=0.5 if how is None else 5)
                return
            except subprocess.TimeoutExpired:
                continue


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
        _r_stopped.add(token)
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


def _dask_block(task, token, block, indices):
    """A Dask task: permutations ``indices`` fitted by this worker's R process."""
    from distributed import get_worker

    worker = get_worker()
    attempt = uuid.uuid4().hex
    # Lets the client tell afterwards which blocks had to be refitted (a worker died on them).
    worker.log_event(f"clusterlmer-{token}", {"block": block, "attempt": attempt, "worker": worker.address})
    deaths = 0
    while True:
        if token in _r_stopped:
            raise RuntimeError("this clusterlmer run was stopped")
        proc = _r_process(token)
        try:
            values = proc.run(token, task, indices)
        except _RProcessDied:
            deaths += 1
            if deaths > MAX_WORKER_RESTARTS or token in _r_stopped:
                raise
            continue
        finally:
            _r_process_done(proc)
        return indices, values, attempt, deaths


def _run_on_dask(task, checkpoint, todo, client, bar, interrupted) -> int:
    """Fit blocks of permutations on Dask workers; returns how many workers (or their R processes) died."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]
    n_threads = sum(client.nthreads().values())  # 0 while SLURM jobs are still queued: blocks of 8 then
    blocks = [[int(k) for k in block] for block in _blocks(todo, max(1, n_threads))]
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
