r"""Structured SPD linear algebra: banded and block-tridiagonal matrices.

`SymmetricBandMatrix` (lower-band storage) and `BlockTridiagonal` (time blocks) with
matvec, Cholesky, solve, log-determinant, sampling and layout conversion, all in
$O(d b^2)$ / $O(T n^3)$ time without any dense $d \times d$ matrix. `solve` and
`logdet` are differentiable in forward and reverse mode by implicit rules that reuse
the factorisation. The block-tridiagonal solver has a sequential (scan, CPU default)
and a parallel (cyclic reduction, $O(\log T)$ depth) variant.

Both matrix classes derive from `AbstractSPDMatrix` and their factorisations
(`BandCholesky`, `BlockTridiagonalCholesky`, `CyclicReductionCholesky`) from
`AbstractCholesky`. **Failures** follow the library's one convention: a factorisation
carries `result` (`jaxda.RESULTS`: `successful`, `not_positive_definite`,
`nonfinite_input`), and every function that returns a plain array (`solve`, `logdet`,
`sample`, `sample_cov`, `inverse_diagonal`) takes `throw=True`, raising an
`equinox.EquinoxRuntimeError` on failure eagerly and under `jit` alike. To branch on a
failure instead, factorise once and read the factor's `result`:

```python
chol = A.cholesky()
x = chol.solve(b, throw=False)  # NaN where chol.result != RESULTS.successful
```
"""

from ._banded import (
    BandCholesky as BandCholesky,
    SymmetricBandMatrix as SymmetricBandMatrix,
)
from ._base import (
    AbstractCholesky as AbstractCholesky,
    AbstractSPDMatrix as AbstractSPDMatrix,
    logdet as logdet,
    solve as solve,
)
from ._block_tridiagonal import (
    BlockTridiagonal as BlockTridiagonal,
    BlockTridiagonalCholesky as BlockTridiagonalCholesky,
)
from ._parallel import CyclicReductionCholesky as CyclicReductionCholesky
