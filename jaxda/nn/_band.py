"""The band-Gaussian MAP shared by the learned prior and the banded first guess."""


def band_gaussian_map(mean, band, form, obs, obs_var):
    r"""MAP under $\mathcal N(\mu, A^{-1})$ (`form="precision"`) or $\mathcal N(\mu, A)$
    (`form="covariance"`), $A$ given by `band`, with the banded solvers of
    `jaxda.gaussian` ($O(d b^2)$, implicit derivatives).

    **Returns:** `(mean, ok)`, `ok` whether the banded Cholesky succeeded."""
    from .. import gaussian
    from ..linalg import SymmetricBandMatrix

    mat = SymmetricBandMatrix(band)
    fn = gaussian.map_precision if form == "precision" else gaussian.map_covariance
    out = fn(mean, mat, obs.values, obs.mask, obs_var)
    return out.mean, out.ok
