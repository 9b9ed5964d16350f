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
from .advection import (
    SSPRK3 as SSPRK3,
    Advection2D as Advection2D,
    flux_divergence as flux_divergence,
    velocity_from_streamfunction as velocity_from_streamfunction,
)
from .lorenz63 import Lorenz63 as Lorenz63
from .lorenz96 import Lorenz96 as Lorenz96
from .pendulum import Pendulum as Pendulum
from .qg import (
    QG as QG,
    QGPreset as QGPreset,
    QGStep as QGStep,
    qg_turbulence as qg_turbulence,
)
from .shallow_water import (
    BasinPreset as BasinPreset,
    ForwardBackward as ForwardBackward,
    ShallowWater as ShallowWater,
    basin_bump as basin_bump,
    basin_grid as basin_grid,
    basin_observations as basin_observations,
    shallow_water_basin as shallow_water_basin,
    spin_up as spin_up,
)
