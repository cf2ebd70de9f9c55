"""Memory a run needs, checked against what is available before anything large is allocated.

A run keeps in the main process every permutation's statistics (the null, float64:
``n_permutations x n_terms x samples``) and the permutation row maps (ints,
``n_permutations x n_obs`` per permutation scheme); each local worker process holds its own
copy of the maps and the data. An impossible request (``n_permutations=10**12``) is refused
with the size, before the observed fit, instead of failing in numpy after it. The estimate
covers these large arrays only (not R sessions nor the data already loaded), so it errs on
the low side.
"""

from __future__ import annotations

import os

from ._checks import option_hint

__all__ = ["available_memory", "check_memory", "check_run_memory"]

GIB = 2 ** 30
_FLOAT, _INDEX = 8, 4  # bytes per null value (float64) and per row-map entry (int32)
# Peak temporaries of cluster_test, in copies of one term's null (measured with tracemalloc: sum/size
# 2.0-2.8, tfce 6.9-8.0 for one and two tails).
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


def check_memory(parts, available=None):
    """Refuse a run whose largest arrays do not fit in the available memory.

    Parameters
    ----------
    parts : dict of str to int
        Bytes needed, by what needs them (named in the message).
    available : int, optional
        Bytes available; by default :func:`available_memory`. Unknown: no check.

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
        "samples (crop or downsample the time axis), or run on a machine with more memory. A checkpoint or a "
        "Dask cluster does not lower this: the whole null is kept in the main process."
    )


def permutation_maps_bytes(n_permutations, n_obs, n_schemes) -> int:
    """Bytes of the row maps :func:`clusterlmer.make_permutations` draws."""
    return int(n_schemes) * int(n_permutations) * int(n_obs) * _INDEX


def check_run_memory(data, model, n_permutations, *, terms=None, schemes=None, cluster_stat="sum", n_jobs=1,
                     client=None, available=None):
    """:func:`check_memory` for a :func:`clusterlmer.permutation_cluster_lmer` run, before its observed fit.

    The tested terms and permutation schemes are not known yet: ``terms`` (or every fixed term of
    ``model``) and one scheme per permuted variable (an upper bound: variables sharing a scheme share its
    maps) stand in for them.
    """
    n_samples = int(data.values[0].size)
    if terms is None:
        n_terms = max(1, len(model.fixed_terms.labels))
    else:
        n_terms = 1 if isinstance(terms, str) else max(1, len(terms))
    permuted = [v for v in model.fixed_variables if (schemes or {}).get(v) != "none"]
    maps = permutation_maps_bytes(n_permutations, data.n_obs, max(1, len(permuted)))
    null_term = int(n_permutations) * n_samples * _FLOAT
    workers = n_jobs if n_jobs > 1 else 0
    parts = {
        "null statistics": n_terms * null_term,
        "cluster test": _CLUSTER_TEST_COPIES.get(cluster_stat, 3) * null_term,
        "permutation maps": maps,
        # the task as sent to workers (pickled once) and each local worker's copy of maps and data
        "worker copies": (maps if workers or client is not None else 0)
        + workers * (maps + int(data.values.nbytes)),
    }
    check_memory(parts, available)
