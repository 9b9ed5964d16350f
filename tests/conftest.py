"""Test configuration: float64 references, one BLAS thread, a key fixture."""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402


# References are computed in float64; float32 paths are tested with explicit float32
# inputs (x64 mode keeps float32 arrays float32).
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Return a function giving a fresh, deterministic PRNG key at each call."""
    key = jax.random.key(0)

    def _getkey():
        nonlocal key
        key, sub = jax.random.split(key)
        return sub

    return _getkey
