"""Test configuration: float64 references, one BLAS thread, fast-compiling XLA flags,
a key fixture."""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The suite is dominated by XLA compilation of small programs: compile them with
# XLA's cheapest CPU backend optimisation (about a third less CPU time, same
# semantics) and with its classic elemental emitters instead of the MLIR fusion
# emitters (3-5x faster to compile a small `var.solve`; the whole suite's CPU time
# fell from 1747 s to 1143 s, every test passing unchanged), and keep XLA's intra-op
# Eigen pool single-threaded (one xdist worker per core already; a multi-threaded
# pool can wedge on large programs).
_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_multi_thread_eigen=false",
)
_xla = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_xla] + [f for f in _FLAGS if f.split("=")[0] not in _xla]
).strip()

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
