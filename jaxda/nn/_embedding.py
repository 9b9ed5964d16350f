r"""Sinusoidal embedding of the level (temperature) $s \in [0, 1]$."""

import jax.numpy as jnp

from .._custom_types import Array, Float, ScalarLike


def sinusoidal_embedding(
    s: ScalarLike, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0
) -> Float[Array, " dim"]:
    r"""Transformer-style positional embedding of a scalar level $s$.

    $e(s) = [\sin(\omega_0 c s), \dots, \sin(\omega_{h-1} c s), \cos(\omega_0 c s),
    \dots, \cos(\omega_{h-1} c s)]$ with $h = \mathrm{dim}/2$, $c$ = `scale` and
    geometrically spaced frequencies $\omega_j = \text{max\_period}^{-j/h}$ (Vaswani et
    al. 2017; Ho et al. 2020). A level $s \in [0, 1]$ is first scaled by $c$ so that the
    levels $s_k = 1 - k/(\ell + 1)$ are well separated in every frequency band.

    **Arguments:**

    - `s`: scalar level.
    - `dim`: embedding size (even, >= 2).
    - `scale`, `max_period`: see above.

    **Returns:** the embedding, shape `(dim,)`, in the dtype of `s` (float32 by
    default).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"`dim` must be an even int >= 2; got {dim}.")
    s = jnp.asarray(s)
    if s.ndim != 0:
        raise ValueError(f"`s` must be a scalar; got shape {s.shape}.")
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=s.dtype) / half)
    arg = scale * s * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
