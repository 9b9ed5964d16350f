"""4DVar: weak- and strong-constraint costs, solvers and cycled assimilation."""

from ._continuation import ModelErrorContinuation as ModelErrorContinuation
from ._costs import (
    AbstractVarProblem as AbstractVarProblem,
    Background as Background,
    JointStateParameter as JointStateParameter,
    StrongConstraint4DVar as StrongConstraint4DVar,
    WeakConstraint4DVar as WeakConstraint4DVar,
)
from ._cycling import CycleResult as CycleResult, cycle as cycle
from ._gauss_newton import (
    GaussNewton as GaussNewton,
    LevenbergMarquardt as LevenbergMarquardt,
    NormalEquations as NormalEquations,
    linearise as linearise,
)
from ._gradient import GradientDescent as GradientDescent, OptaxSolver as OptaxSolver
from ._incremental import Incremental4DVar as Incremental4DVar
from ._jaxopt import (
    JaxoptGaussNewton as JaxoptGaussNewton,
    JaxoptLevenbergMarquardt as JaxoptLevenbergMarquardt,
)
from ._quasi_static import QuasiStatic as QuasiStatic
from ._solution import (
    RESULTS as RESULTS,
    AbstractSolver as AbstractSolver,
    Solution as Solution,
    solve as solve,
)
from ._strong import (
    DenseGaussNewton as DenseGaussNewton,
    DenseLevenbergMarquardt as DenseLevenbergMarquardt,
    DiffraxTrajectory as DiffraxTrajectory,
)
