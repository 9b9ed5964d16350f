"""4DVar: weak- and strong-constraint costs, solvers and cycled assimilation."""

from .._results import RESULTS as RESULTS
from ._continuation import ModelErrorContinuation as ModelErrorContinuation
from ._control_transform import ControlTransform as ControlTransform
from ._costs import (
    AbstractVarProblem as AbstractVarProblem,
    Background as Background,
    JointStateParameter as JointStateParameter,
    StrongConstraint4DVar as StrongConstraint4DVar,
    WeakConstraint4DVar as WeakConstraint4DVar,
)
from ._cycling import CycleResult as CycleResult, cycle as cycle
from ._forcing import WeakConstraintForcing as WeakConstraintForcing
from ._gauss_newton import (
    AbstractGaussNewton as AbstractGaussNewton,
    DenseGaussNewton as DenseGaussNewton,
    DenseLevenbergMarquardt as DenseLevenbergMarquardt,
    GaussNewton as GaussNewton,
    Incremental4DVar as Incremental4DVar,
    LevenbergMarquardt as LevenbergMarquardt,
)
from ._globalisation import (
    AbstractGlobalisation as AbstractGlobalisation,
    AdaptiveDamping as AdaptiveDamping,
    ArmijoBacktracking as ArmijoBacktracking,
)
from ._gradient import GradientDescent as GradientDescent, OptaxSolver as OptaxSolver
from ._incremental import IncrementalMAP as IncrementalMAP
from ._jaxopt import (
    JaxoptGaussNewton as JaxoptGaussNewton,
    JaxoptLevenbergMarquardt as JaxoptLevenbergMarquardt,
)
from ._lbfgs import LBFGS as LBFGS
from ._matrix_free import (
    ConjugateGradientNormal as ConjugateGradientNormal,
    GaussNewtonCG as GaussNewtonCG,
    NormalCGSolution as NormalCGSolution,
)
from ._normal import (
    AbstractNormalSolve as AbstractNormalSolve,
    BlockTridiagonalNormal as BlockTridiagonalNormal,
    DenseNormal as DenseNormal,
    NormalEquations as NormalEquations,
    linearise as linearise,
)
from ._quasi_static import QuasiStatic as QuasiStatic
from ._solution import (
    Iterates as Iterates,
    SaveIterates as SaveIterates,
    Solution as Solution,
)
from ._solve import solve as solve
from ._solver import (
    AbstractIterativeSolver as AbstractIterativeSolver,
    AbstractSolver as AbstractSolver,
    AbstractSolverState as AbstractSolverState,
)
from ._strong import DiffraxTrajectory as DiffraxTrajectory
from ._uncertainty import (
    PerturbedProblem as PerturbedProblem,
    PosteriorEnsemble as PosteriorEnsemble,
    laplace_ensemble as laplace_ensemble,
    residual_noise as residual_noise,
    rml_ensemble as rml_ensemble,
)
