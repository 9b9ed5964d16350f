"""Reusable neural-network layers (as `equinox.nn`), shared by the learned methods.

- `Conv`: N-d convolution with per-axis periodic or zero "same" padding.
- `ConvLSTMCell`: a convolutional LSTM cell.
- `sinusoidal_embedding`: the embedding of a scalar level or time.
- `FlaxModule`: a `flax.nnx` module as an equinox module (needs flax).

The learned data-assimilation methods built on them are `jaxda.fourdvarnet` ([F21])
and `jaxda.incremental` ([B24]).
"""

from ._conv import Conv as Conv, ConvLSTMCell as ConvLSTMCell
from ._embedding import sinusoidal_embedding as sinusoidal_embedding
from ._flax import FlaxModule as FlaxModule


__all__ = ["Conv", "ConvLSTMCell", "FlaxModule", "sinusoidal_embedding"]
