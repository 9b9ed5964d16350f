"""Array type aliases shared by the whole library (jaxtyping)."""

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real, Shaped


# One window of a trajectory: time leading, then the state shape.
Trajectory = Float[Array, "T *state"]
State = Float[Array, "*state"]
Mask = Bool[Array, "T *state"]
Scalar = Float[Array, ""]
ScalarLike = float | Float[ArrayLike, ""]
Key = PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "Key",
    "Mask",
    "PRNGKeyArray",
    "Real",
    "Scalar",
    "ScalarLike",
    "Shaped",
    "State",
    "Trajectory",
]
