"""clusterlmer: mixed models per timepoint with cluster-based permutation tests.

Fits ``data ~ hit_miss * region + (1|sid) + (1|sid:ch)`` (or any lme4 formula)
at every sample of an iEEG timeseries with lme4/lmerTest, and reports
MATLAB-style F tests with Satterthwaite degrees of freedom.
"""

from .data import TimeseriesData, from_dataframe
from .design import DesignError
from .fit import fit_timeseries
from .io import MatFileError, load_mat
from .formula import FormulaError, parse_formula
from .results import TimeseriesFit
from .simulate import simulate_ieeg

__version__ = "0.1.0"

__all__ = [
    "TimeseriesData",
    "TimeseriesFit",
    "from_dataframe",
    "load_mat",
    "MatFileError",
    "fit_timeseries",
    "parse_formula",
    "simulate_ieeg",
    "FormulaError",
    "DesignError",
]
