"""jaxda: variational and learned data assimilation in JAX."""

from . import models as models


__version__ = "0.1.0"
