r"""Regular 2-D grids: the `Grid` metadata that gridded models, operators and I/O share.

Fields are arrays `(ny, nx)`; states with channels `(C, ny, nx)`; trajectories
`(T, C, ny, nx)`. See `Grid` for the coordinate and boundary conventions.
"""

from ._covariance import AbstractCovariance as AbstractCovariance
from ._grid import Grid as Grid


__all__ = ["AbstractCovariance", "Grid"]
