"""Memory a run needs, checked against what is available before anything large is allocated.

A run keeps in the main process every permutation's statistics (the null, float64:
``n_permutations x n_terms x samples``) and the permutation row maps (ints,
``n_permutations x n_obs`` per permutation scheme); each local worker process holds its own
copy of the maps and the data. The cluster step reads the null in blocks of
:data:`clusterlmer._null_blocks.BLOCK_BYTES` and needs a few copies of one block. A null
larger than half the available memory is kept in the checkpoint file instead, mapped into
memory (:mod:`clusterlmer._mapped_null`), when the run has a checkpoint; without one the run
is refused once the null no longer fits at all. An impossible request
(``n_permutations=10**12``) is refused with the size, before the observed fit, instead of
failing in numpy after it. The estimate covers these large arrays only (not R sessions nor
the data already loaded), so it errs on the low side.
"""

from __future__ import annotations

import os
import shutil

from ._checks import option_hint
from ._null_blocks import BLOCK_BYTES

__all__ = ["available_memory", "check_memory", "check_run_memory"]

GIB = 2 ** 30
_FLOAT, _INDEX = 8, 4  # bytes per null value (float64) and per row-map entry (int32)
# Peak temporaries of cluster_test, in copies of one block of one term's null (measured with tracemalloc
# on one block: sum/size 2.0-2.8, tfce 6.9-8.0 for one and two tails).
_CLUSTER_TEST_COPIES = {"tfce": 8, "sum": 3, "size": 3}


def _cgroup_limit():
    """Bytes left under this process's cgroup v2 memory limit (SLURM jobs, containers), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    for folder in ([f"/sys/fs/cgroup{path}"] if path else []) + ["/sys/fs/cgroup"]:
        try:
            with open(os.path.join(folder, "memory.max")) as f:
                limit = f.read().strip()
            with open(os.path.join(folder, "memory.current")) as f:
                used = int(f.read())
        except (OSError, ValueError):
            continue
        return None if limit == "max" else max(0, int(limit) - used)
    return None


def available_memory():
    """Bytes that can still be allocated without swapping, or None when the system does not say.

    ``MemAvailable`` of ``/proc/meminfo`` (else the free pages from ``os.sysconf``), lowered to
    what a cgroup v2 memory limit leaves.
    """
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            found = None
    limit = _cgroup_limit()
    if limit is not None:
        found = limit if found is None else min(found, limit)
    return found


def _gib(n_bytes) -> str:
    return f"{n_bytes / GIB:,.1f} GiB"


def check_memory(parts, available=None, advice=None):
    """Refuse a run whose largest arrays do not fit in the available memory.

    Parameters
    ----------
    parts : dict of str to int
        Bytes needed, by what needs them (named in the message).
    available : int, optional
        Bytes available; by default :func:`available_memory`. Unknown: no check.
    advice : str, optional
        What else would lower the need, appended to the message.

    Raises
    ------
    ValueError
        Naming the size needed, what is available, and what to change.
    """
    need = sum(parts.values())
    available = available_memory() if available is None else available
    if available is None or need <= available:
        return
    what = "; ".join(f"{name}: {_gib(size)}" for name, size in parts.items() if size)
    fewer = option_hint("n_permutations=1000", "--nperm 1000")
    raise ValueError(
        f"this run needs about {_gib(need)} of memory ({what}), but only {_gib(available)} are available. "
        f"Use fewer permutations ({fewer} gives cluster p down to 0.001, 10000 down to 0.0001) or fewer "
        "samples (crop or downsample the time axis), or run on a machine with more memory."
        + (f" {advice}" if advice else "")
    )


def permutation_maps_bytes(n_permutations, n_obs, n_schemes) -> int:
    """Bytes of the row maps :func:`clusterlmer.make_permutations` draws."""
    return int(n_schemes) * int(n_permutations) * int(n_obs) * _INDEX


def check_run_memory(data, model, n_permutations, *, terms=None, schemes=None, cluster_stat="sum", n_jobs=1,
                     client=None, checkpoint=None, available=None) -> bool:
    """:func:`check_memory` for a :func:`clusterlmer.permutation_cluster_lmer` run, before its observed fit.

    The tested terms and permutation schemes are not known yet: ``terms`` (or every fixed term of
    ``model``) and one scheme per permuted variable (an upper bound: variables sharing a scheme share its
    maps) stand in for them.

    Returns
    -------
    bool
        True when the null is to be kept in the checkpoint file (mapped): it would take more than half
        the available memory and ``checkpoint`` is given. The file's disk space is checked then.
    """
    n_samples = int(data.values[0].size)
    if terms is None:
        n_terms = max(1, len(model.fixed_terms.labels))
    else:
        n_terms = 1 if isinstance(terms, str) else max(1, len(terms))
    permuted = [v for v in model.fixed_variables if (schemes or {}).get(v) != "none"]
    maps = permutation_maps_bytes(n_permutations, data.n_obs, max(1, len(permuted)))
    null_term = int(n_permutations) * n_samples * _FLOAT
    null = n_terms * null_term
    workers = n_jobs if n_jobs > 1 else 0
    parts = {
        "null statistics": null,
        "cluster test": _CLUSTER_TEST_COPIES.get(cluster_stat, 3) * min(null_term, BLOCK_BYTES),
        "permutation maps": maps,
        # the task as sent to workers (pickled once) and each local worker's copy of maps and data
        "worker copies": (maps if workers or client is not None else 0)
        + workers * (maps + int(data.values.nbytes)),
    }
    available = available_memory() if available is None else available
    if available is None or sum(parts.values()) <= available / 2:
        return False
    if checkpoint is None:
        keep = option_hint("checkpoint='run.h5'", "--checkpoint run.h5")
        check_memory(parts, available, advice=f"Or pass {keep}: the null is then kept in that file, mapped "
                                              "into memory, and the run needs memory for one block of it only.")
        return False
    parts["null statistics"] = 0  # in the file; the operating system pages it in and out
    check_memory(parts, available)
    _check_disk(checkpoint, null)
    return True


def _check_disk(path, need):
    """Refuse a mapped null whose file would not fit on its disk (a file already there is reused)."""
    folder = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(folder).free + (os.path.getsize(path) if os.path.exists(path) else 0)
    if need > free:
        raise ValueError(
            f"the null of this run ({_gib(need)}) is kept in the checkpoint file {path!r}, but its disk has only "
            f"{_gib(free)} free. Pass a checkpoint path on a disk with more space, or use fewer permutations or "
            "samples.")
