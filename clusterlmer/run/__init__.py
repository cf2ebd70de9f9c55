"""Where permutation blocks run: this process, local worker processes, or a Dask cluster.

* :mod:`~clusterlmer.run.dispatch`: :func:`run_permutations`, the entry point (blocks, Ctrl-C, progress).
* :mod:`~clusterlmer.run.local`: local worker processes (``n_jobs``), capped at the cores.
* :mod:`~clusterlmer.run.dask`: blocks as Dask tasks (``client=``), their errors and lost workers;
  :mod:`~clusterlmer.run.dask_worker`: what a Dask worker does with a block.
* :mod:`~clusterlmer.run.worker_process`: the child process both use, and its pipe protocol.

No module here names an engine: what differs between engines (block size, whether it needs a
process of its own, its name in messages) is read from :func:`clusterlmer.engines.engine_properties`.
"""

from .dask import check_client
from .dispatch import run_permutations
from .local import available_cores, resolve_n_jobs

__all__ = ["run_permutations", "resolve_n_jobs", "available_cores", "check_client"]
