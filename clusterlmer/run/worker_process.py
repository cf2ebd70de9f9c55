"""Worker processes: children of this interpreter that fit blocks of permutations.

A worker is ``python -c "from clusterlmer.run.worker_process import serve; serve()"``. It imports
this package only, never the caller's ``__main__`` module (multiprocessing's spawn re-imports it,
which fails in a script without an ``if __name__ == "__main__":`` guard), and it fits in its own
main thread, alone, as engines that need their own process (R) require. Local workers
(``n_jobs``, :mod:`clusterlmer.run.local`) and the children of Dask worker threads
(:mod:`clusterlmer.run.dask_worker`) are both this process.

The protocol runs over the child's stdin and stdout, both length-prefixed pickles. The parent
sends ``(token, sys.path, task, indices)``: ``task`` (the pickled task, or None) replaces the
task held and is sent once per run and child; ``indices`` None drops the task (the run is over)
and gets no answer; otherwise the child answers ``("ok", statistics)`` or ``("error", exception,
traceback)``. Whatever R or Python prints in the child goes to its stderr. The child ignores
Ctrl-C (the parent decides what stops) and exits at end of file on stdin (its parent closed the
pipe, or died), after ``idle_exit`` seconds without a message, or when its parent process is gone
(checked every second, since a parent killed outright closes nothing while a block is fitted).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np

__all__ = ["WorkerDied", "WorkerProcess", "batches_of", "dumps", "serve", "statistics_of", "stop_all"]

# The directory holding the clusterlmer package: the child imports the same clusterlmer as its parent.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Workers are one process per core: BLAS threads inside each would oversubscribe the cores
# (as joblib's workers, they get one thread unless the user set a number).
_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_CHILD = ("import sys\nif {root!r} not in sys.path: sys.path.insert(0, {root!r})\n"
          "from clusterlmer.run.worker_process import serve\nserve({idle_exit!r})")


def batches_of(task, indices) -> list:
    """``indices`` cut where the task's batches (``k // task.batch_size``) change, in order."""
    size = int(getattr(task, "batch_size", 1))
    out = []
    for k in indices:
        if out and out[-1][-1] // size == int(k) // size:
            out[-1].append(int(k))
        else:
            out.append([int(k)])
    return out


def statistics_of(task, indices) -> np.ndarray:
    """Statistics of permutations ``indices`` (stacked): in batches when the task fits batches."""
    if hasattr(task, "statistics_of"):
        return task.statistics_of(indices)
    return np.stack([task.statistics(k) for k in indices])


def dumps(task) -> bytes:
    """``task`` pickled for a worker; with cloudpickle (as Dask) when installed, so that tasks
    defined in ``__main__`` or interactively travel by value instead of by a module name."""
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)


def write_message(fd, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<Q", len(data)) + data)
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


def read_message(fd, timeout=None):
    """The next message; None at end of file (the other side is gone) or after ``timeout`` s of silence."""
    if timeout is not None and not select.select([fd], [], [], timeout)[0]:
        return None
    head = _read_exact(fd, 8)
    if head is None:
        return None
    data = _read_exact(fd, struct.unpack("<Q", head)[0])
    return None if data is None else pickle.loads(data)


def _exit_with_parent(parent_pid, interval=1.0):
    """End this process when its parent is gone, even in the middle of a block.

    While R runs, rpy2 holds the GIL, so the process leaves after the fit in progress.
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="clusterlmer-parent-watch", daemon=True).start()


def serve(idle_exit=None):
    """Main loop of a worker process (see the module docstring for the protocol)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)  # whatever R or Python prints goes to stderr, never into the replies
    task = None
    while True:
        try:
            message = read_message(requests, timeout=idle_exit)
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
                message = payload = None  # the pickled copy of the task's data is not needed any more
            if indices is None:
                task = None
                continue
            reply = ("ok", statistics_of(task, indices))
        except Exception as exc:
            import traceback

            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
                reply = ("error", exc, text)
            except Exception:
                reply = ("error", RuntimeError(text), text)
        try:
            write_message(replies, reply)
        except OSError:
            return


class WorkerDied(RuntimeError):
    """The worker process ended (killed, out of memory, a crash in R) before answering."""


class WorkerProcess:
    """One worker process and the run whose task it holds.

    Parameters
    ----------
    idle_exit : float, optional
        The child exits after this many seconds without a message (None: only at end of file).
    label : str
        How errors from the child name it, e.g. ``"local worker"``.
    """

    def __init__(self, idle_exit=None, label="worker process"):
        code = _CHILD.format(root=_ROOT, idle_exit=idle_exit)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env={**_ONE_THREAD, **os.environ})
        self.label = label
        self.token = None  # the run whose task the child holds
        self._task_sent = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        """The reply pipe: readable when an answer (or end of file) is waiting (for ``select``)."""
        return self.proc.stdout.fileno()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, token, task, indices):
        """Ask for permutations ``indices`` of run ``token`` (``task``: object or :func:`dumps` bytes)."""
        payload = None
        if self.token != token:
            payload = task if isinstance(task, bytes) else dumps(task)
        self.token, self._task_sent = token, payload is not None
        try:
            write_message(self.proc.stdin.fileno(), (token, list(sys.path), payload, list(indices)))
        except (OSError, ValueError):  # ValueError: stopped meanwhile (its pipes closed)
            self._died()

    def receive(self) -> np.ndarray:
        """The answer to :meth:`send`; raises :class:`WorkerDied`, or the error raised in the child."""
        try:
            reply = read_message(self.fileno())
        except (OSError, ValueError):
            reply = None
        if reply is None:
            self._died()
        if reply[0] == "error":
            if self._task_sent:
                self.token = None  # the task may not have arrived: send it again with the next block
            exc, text = reply[1], reply[2]
            if hasattr(exc, "add_note"):
                exc.add_note(f"In the {self.label} (pid {self.pid}):\n{text}")
            raise exc
        return reply[1]

    def run(self, token, task, indices) -> np.ndarray:
        """:meth:`send` then :meth:`receive`."""
        self.send(token, task, indices)
        return self.receive()

    def forget(self):
        """Drop the run's task (its data) from the child's memory; the child stays up."""
        try:
            write_message(self.proc.stdin.fileno(), (None, None, None, None))
        except (OSError, ValueError):
            self.stop()
        self.token = None

    def _died(self):
        self.stop()
        raise WorkerDied(f"the {self.label} (pid {self.pid}) died with exit code {self.proc.returncode}")

    def close(self):
        """Close both pipes: an idle child exits at once, a busy one when it answers."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stop(self):
        """Close the pipes and wait briefly for the child to exit, then terminate (and kill) it."""
        self.close()
        for how in (None, self.proc.terminate, self.proc.kill):
            if how is not None:
                how()
            try:
                self.proc.wait(timeout=0.5 if how is None else 5)
                return
            except subprocess.TimeoutExpired:
                continue


def stop_all(workers):
    """Stop several workers, closing every pipe first so that they wind down together."""
    for worker in workers:
        worker.close()
    for worker in workers:
        worker.stop()
