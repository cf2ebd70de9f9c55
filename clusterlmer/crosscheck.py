"""The cross-check of a non-reference engine: a few observed samples refitted by lme4/lmerTest.

``start_cross_check`` picks the samples (spread over those with finite
statistics) and refits them with the reference engine
(:data:`clusterlmer.engines.REFERENCE_ENGINE`), either at once or in a worker
process of the package's own that runs alongside the permutations (starting R
takes a few seconds that the permutations need not wait for).
``CrossCheck.result`` compares F and DF2 and returns the record kept in
``fit.options["cross_check"]``, warning when the difference is larger than
lme4's optimizer explains. A :class:`ReferenceProcess` starts that worker
(and R in it) before the observed fit, so R's start overlaps it too.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from ._checks import option_hint
from .engines import REFERENCE_ENGINE, get_engine
from .samples import fit_samples

__all__ = ["CROSS_CHECK_TOLERANCE", "CrossCheck", "ReferenceProcess", "start_cross_check"]

# Native vs R on the same data differ by how precisely lme4's bobyqa locates
# a flat optimum (a few 1e-6 relative at most in the parity tests).
CROSS_CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class _ReferenceFits:
    """The reference engine's F and DF2 at the picked samples (a task a worker process runs)."""

    spec: object
    Y: np.ndarray
    options: object

    def statistics_of(self, indices) -> np.ndarray:
        fit, _ = fit_samples(self.spec, self.Y, self.options, REFERENCE_ENGINE)
        return np.stack([fit.F, fit.df2])[None]


class _StartReference:
    """Start the reference engine in a worker process (a task answering nothing)."""

    def statistics_of(self, indices) -> np.ndarray:
        get_engine(REFERENCE_ENGINE).warm_up()
        return np.zeros(1)


class ReferenceProcess:
    """A worker process starting the reference engine now, for a cross-check sent to it later.

    :func:`start_cross_check` takes it as ``alongside``; :meth:`stop` ends it
    when no cross-check comes (a no-op once a :class:`CrossCheck` owns it).
    """

    def __init__(self):
        from .run.worker_process import WorkerProcess

        self.worker = WorkerProcess(label="R cross-check process")
        self.worker.send(uuid.uuid4().hex[:12], _StartReference(), [0])

    def stop(self):
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


class CrossCheck:
    """A cross-check under way (or done, or not run); :meth:`result` gives its record."""

    def __init__(self, fit, picks, reference=None, worker=None, note="not run", replies_before=0):
        self._fit, self.picks = fit, picks
        self._reference, self._worker, self._note = reference, worker, note
        self._replies_before = replies_before  # answers to earlier requests (starting R) to read first

    def result(self, stacklevel=2) -> dict:
        """The record ``{"samples", "max_rel_diff", "note"}``, waiting for the worker if one runs."""
        if self._worker is not None:
            try:
                for _ in range(self._replies_before):
                    self._worker.receive()
                self._reference = self._worker.receive()[0]
            except ImportError as exc:
                self._note = f"R engine not available ({exc})"
            finally:
                self.cancel()
        if self._reference is None:
            return {"samples": [int(p) for p in self.picks], "max_rel_diff": None, "note": self._note}
        worst = 0.0
        for a, b in zip((self._fit.F[:, self.picks], self._fit.df2[:, self.picks]), self._reference):
            ok = np.isfinite(a) & np.isfinite(b)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.abs(a - b)[ok] / np.maximum(np.abs(b)[ok], 1e-8)
            worst = max(worst, float(rel.max(initial=0.0)))
        if worst > CROSS_CHECK_TOLERANCE:
            use_r = option_hint("engine='r'", "--engine r")
            warnings.warn(f"the native engine differs from lme4/lmerTest by up to {worst:.2g} (relative, F/DF2) "
                          f"at samples {self.picks.tolist()}, more than the expected {CROSS_CHECK_TOLERANCE:g}. "
                          f"Please report this; {use_r} gives lmerTest's numbers.", RuntimeWarning,
                          stacklevel=stacklevel + 1)
        return {"samples": self.picks.tolist(), "max_rel_diff": worst, "note": ""}

    def cancel(self):
        """Stop the worker process, if any (the check is then not run)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


def start_cross_check(spec, Y, options, fit, n_samples, *, alongside=False) -> CrossCheck:
    """Refit ``n_samples`` observed samples of ``fit`` with the reference engine.

    Parameters
    ----------
    spec : clusterlmer.spec.ModelSpec
    Y : ndarray, shape (n_obs, n_samples_total)
    options : FitOptions
    fit : BlockFit
        The engine's fit being checked.
    n_samples : int
        Samples to refit (0: none).
    alongside : bool or ReferenceProcess
        Refit in a worker process while the caller goes on (its
        :meth:`CrossCheck.result` waits): a new one, or the given one
        (started earlier); otherwise here, at once.
    """
    finite = np.flatnonzero(np.isfinite(fit.F).all(axis=0))
    if n_samples <= 0 or len(finite) == 0:
        return CrossCheck(fit, np.array([], dtype=int))
    picks = finite[np.unique(np.linspace(0, len(finite) - 1, min(n_samples, len(finite))).round().astype(int))]
    task = _ReferenceFits(spec, Y[:, picks], options)
    if alongside:
        started = alongside if isinstance(alongside, ReferenceProcess) else ReferenceProcess()
        worker, started.worker = started.worker, None  # the CrossCheck owns it now
        worker.send(uuid.uuid4().hex[:12], task, [0])
        return CrossCheck(fit, picks, worker=worker, replies_before=1)
    try:
        return CrossCheck(fit, picks, reference=task.statistics_of([0])[0])
    except ImportError as exc:
        return CrossCheck(fit, picks, note=f"R engine not available ({exc})")
