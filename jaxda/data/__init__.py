"""Twin-experiment datasets, presets, first guesses, normalisation, netCDF I/O, gridded
OSSEs (`make_osse`, `make_osse_splits`) and space-time patches (`PatchLayout`)."""

from ._banded_gaussian import (
    BandedGaussian as BandedGaussian,
    covariance_band as covariance_band,
)
from ._dataset import (
    Dataset as Dataset,
    GaussianInitialState as GaussianInitialState,
    UniformInitialState as UniformInitialState,
    make_dataset as make_dataset,
)
from ._fields_io import (
    GriddedFields as GriddedFields,
    fields_from_xarray as fields_from_xarray,
    fields_to_xarray as fields_to_xarray,
    load_fields as load_fields,
    save_fields as save_fields,
)
from ._first_guess import (
    empirical_moments as empirical_moments,
    gaussian_first_guess as gaussian_first_guess,
    interpolate_observations as interpolate_observations,
)
from ._gauss_markov import GaussMarkovPrior as GaussMarkovPrior
from ._netcdf import load_dataset as load_dataset, save_dataset as save_dataset
from ._normalise import Normalisation as Normalisation
from ._osse import (
    OSSE as OSSE,
    CovarianceInitialState as CovarianceInitialState,
    make_osse as make_osse,
    make_osse_splits as make_osse_splits,
)
from ._patches import PatchLayout as PatchLayout
from ._presets import (
    PRESET_NAMES as PRESET_NAMES,
    Preset as Preset,
    get_preset as get_preset,
    make_preset_dataset as make_preset_dataset,
    make_preset_splits as make_preset_splits,
)
