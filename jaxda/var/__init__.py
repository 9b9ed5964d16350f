"""4DVar: weak- and strong-constraint costs, solvers and cycled assimilation."""

from ._costs import (
    AbstractVarProblem as AbstractVarProblem,
    Background as Background,
    JointStateParameter as JointStateParameter,
    StrongConstraint4DVar as StrongConstraint4DVar,
    WeakConstraint4DVar as WeakConstraint4DVar,
)
from ._gradient import GradientDescent as GradientDescent, OptaxSolver as OptaxSolver
from ._jaxopt import (
    JaxoptGaussNewton as JaxoptGaussNewton,
    JaxoptLevenbergMarquardt as JaxoptLevenbergMarquardt,
)
from ._solution import (
    RESULTS as RESULTS,
    AbstractSolver as AbstractSolver,
    Solution as Solution,
    solve as solve,
)
