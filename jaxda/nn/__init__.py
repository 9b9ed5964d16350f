"""Reusable neural-network layers (as `equinox.nn`), shared by the learned methods.

- `Conv`: N-d convolution with per-axis periodic or zero "same" padding, computed by
  XLA's convolution or by shifted views and one contraction (`method`).
- `with_conv_method`: switch every `Conv` of a model to one implementation.
- `ConvLSTMCell`: a convolutional LSTM cell.
- `sinusoidal_embedding`: the embedding of a scalar level or time.
- `FlaxModule`: a `flax.nnx` module as an equinox module (needs flax).
- `count_parameters`: the number of scalars in the array leaves of a model.

The learned data-assimilation methods built on them are `jaxda.fourdvarnet` ([F21])
and `jaxda.incremental` ([B24]).
"""

from ._conv import (
    Conv as Conv,
    ConvLSTMCell as ConvLSTMCell,
    with_conv_method as with_conv_method,
)
from ._embedding import sinusoidal_embedding as sinusoidal_embedding
from ._flax import FlaxModule as FlaxModule
from ._params import count_parameters as count_parameters


__all__ = [
    "Conv",
    "ConvLSTMCell",
    "FlaxModule",
    "count_parameters",
    "sinusoidal_embedding",
    "with_conv_method",
]
