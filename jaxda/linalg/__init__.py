r"""Structured SPD linear algebra: banded and block-tridiagonal matrices.

`SymmetricBandMatrix` (lower-band storage) and `BlockTridiagonal` (time blocks) with
matvec, Cholesky, solve, log-determinant, sampling and layout conversion, all in
$O(d b^2)$ / $O(T n^3)$ time without any dense $d \times d$ matrix. `solve` and
`logdet` are differentiable in forward and reverse mode by implicit rules that reuse
the factorisation. The block-tridiagonal solver has a sequential (scan, CPU default)
and a parallel (cyclic reduction, $O(\log T)$ depth) variant.
"""

from ._banded import (
    BandCholesky as BandCholesky,
    SymmetricBandMatrix as SymmetricBandMatrix,
)
from ._block_tridiagonal import (
    BlockTridiagonal as BlockTridiagonal,
    BlockTridiagonalCholesky as BlockTridiagonalCholesky,
)
from ._implicit import logdet as logdet, solve as solve
from ._parallel import CyclicReductionCholesky as CyclicReductionCholesky
