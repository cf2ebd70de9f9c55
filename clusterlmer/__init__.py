"""clusterlmer: mixed models per timepoint with cluster-based permutation tests.

Fits ``data ~ hit_miss * region + (1|sid) + (1|sid:ch)`` (or any lme4 formula)
at every sample of an iEEG timeseries with lme4/lmerTest, reports MATLAB-style
F tests with Satterthwaite degrees of freedom, and corrects across time with a
cluster-based permutation test whose permutations keep channels nested in
subjects.
"""

from . import datasets
from .analysis import permutation_cluster_lmer
from .checkpoint import CheckpointError
from .cluster import cluster_test
from .corrections import max_statistic_test
from .data import TimeseriesData, from_dataframe
from .design import DesignError
from .fit import fit_timeseries
from .formula import FormulaError, parse_formula
from .io import MatFileError, load_mat
from .loading import ResultFileError, load_result
from .long_format import from_long
from .mne_input import from_mne
from .permute import Permutations, make_permutations
from .results import PermutationClusterResult, TimeseriesFit
from .simulate import simulate_erp, simulate_ieeg, simulate_subject_item

__version__ = "0.1.0"

__all__ = [
    "TimeseriesData",
    "TimeseriesFit",
    "PermutationClusterResult",
    "Permutations",
    "from_dataframe",
    "from_mne",
    "from_long",
    "load_mat",
    "load_result",
    "datasets",
    "fit_timeseries",
    "permutation_cluster_lmer",
    "make_permutations",
    "cluster_test",
    "max_statistic_test",
    "parse_formula",
    "simulate_erp",
    "simulate_ieeg",
    "simulate_subject_item",
    "FormulaError",
    "DesignError",
    "MatFileError",
    "CheckpointError",
    "ResultFileError",
]
