"""Files: atomic writing, JSON results, checkpoints and trained models.

- `atomic_path`, `save_json`: every file jaxda writes goes through `atomic_path`, so an
  interrupted run never leaves a half-written file.
- `save_checkpoint`, `load_checkpoint`, `read_checkpoint_header`: the checkpoint format
  (a JSON header line under a SHA-256 checksum, then `equinox` serialised leaves), used
  by `jaxda.train.fit`.
- `save_model`, `load_model`: trained `jaxda.fourdvarnet.FourDVarNet` and
  `jaxda.incremental.NeuralBandGaussian` models in that format, with the architecture
  in the header; the header is validated against the stored leaves before anything is
  built. Loading never executes code.
"""

from ._atomic import atomic_path as atomic_path, save_json as save_json
from ._checkpoint import (
    load_checkpoint as load_checkpoint,
    read_checkpoint_header as read_checkpoint_header,
    save_checkpoint as save_checkpoint,
)
from ._model import load_model as load_model, save_model as save_model


__all__ = [
    "atomic_path",
    "load_checkpoint",
    "load_model",
    "read_checkpoint_header",
    "save_checkpoint",
    "save_json",
    "save_model",
]
