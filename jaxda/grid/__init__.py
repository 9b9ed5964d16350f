r"""Regular 2-D grids: the `Grid` metadata that gridded models, operators and I/O share.

Fields are arrays `(ny, nx)`; states with channels `(C, ny, nx)`; trajectories
`(T, C, ny, nx)`. See `Grid` for the coordinate and boundary conventions.
"""

from ._covariance import (
    AbstractCovariance as AbstractCovariance,
    DiffusionCovariance as DiffusionCovariance,
    SpectralCovariance as SpectralCovariance,
)
from ._differences import (
    centres_to_faces as centres_to_faces,
    diff_backward as diff_backward,
    diff_centred as diff_centred,
    diff_forward as diff_forward,
    divergence as divergence,
    faces_to_centres as faces_to_centres,
    gradient as gradient,
    laplacian as laplacian,
    weighted_laplacian as weighted_laplacian,
)
from ._grid import Grid as Grid
from ._space_time import (
    SpaceTimeCovariance as SpaceTimeCovariance,
    SpaceTimeKernel as SpaceTimeKernel,
)


__all__ = [
    "AbstractCovariance",
    "DiffusionCovariance",
    "Grid",
    "SpaceTimeCovariance",
    "SpaceTimeKernel",
    "SpectralCovariance",
    "centres_to_faces",
    "diff_backward",
    "diff_centred",
    "diff_forward",
    "divergence",
    "faces_to_centres",
    "gradient",
    "laplacian",
    "weighted_laplacian",
]
