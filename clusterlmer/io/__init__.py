"""MATLAB ``.mat`` files in and out.

* :mod:`~clusterlmer.io.read` decodes v7.3 (HDF5) and v4/v5/v7 files into one
  plain form of variables;
* :mod:`~clusterlmer.io.layout` knows the original analysis's layout (which
  variables are labels, the row checks) and assembles :class:`TimeseriesData`
  (:func:`load_mat`);
* :mod:`~clusterlmer.io.write` writes MATLAB v7.3 and v5 files (result files,
  test inputs).
"""

from .layout import check_one_row_per_level, load_mat
from .read import MatFileError
from .write import write_mat5, write_mat73

__all__ = ["load_mat", "MatFileError", "check_one_row_per_level", "write_mat73", "write_mat5"]
