"""The band-Gaussian MAP shared by the learned prior and the banded first guess."""


def band_gaussian_map(mean, band, form, obs, obs_var, max_obs=None):
    r"""MAP under $\mathcal N(\mu, A^{-1})$ (`form="precision"`) or $\mathcal N(\mu, A)$
    (`form="covariance"`), $A$ given by `band`, with the banded solvers of
    `jaxda.gaussian` ($O(d b^2)$, implicit derivatives). With `max_obs` the covariance
    form is solved in observation space ($O(m^3 + d b)$, see
    `jaxda.gaussian.map_covariance`); the precision form has no such shortcut and
    ignores it.

    **Returns:** `(mean, ok)`, `ok` whether the factorisation succeeded."""
    from .. import gaussian
    from ..linalg import SymmetricBandMatrix

    mat = SymmetricBandMatrix(band)
    if form == "precision":
        out = gaussian.map_precision(mean, mat, obs.values, obs.mask, obs_var)
    else:
        out = gaussian.map_covariance(
            mean, mat, obs.values, obs.mask, obs_var, max_obs=max_obs
        )
    return out.mean, out.ok
