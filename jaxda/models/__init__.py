"""Dynamical systems, their integration (`simulate`) and one-step flow maps."""

from ._base import AbstractDynamics as AbstractDynamics
from ._flow import (
    RK4 as RK4,
    AbstractFlowMap as AbstractFlowMap,
    DiffraxStep as DiffraxStep,
    Euler as Euler,
    flow_map as flow_map,
    rollout as rollout,
)
from ._simulate import (
    Simulation as Simulation,
    sample_initial_states as sample_initial_states,
    simulate as simulate,
)
from .lorenz63 import Lorenz63 as Lorenz63
from .lorenz96 import Lorenz96 as Lorenz96
from .pendulum import Pendulum as Pendulum
