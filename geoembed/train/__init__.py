"""The train stage: multi-view contrastive training of a coordinate encoder, then a bundle.

``geoembed train -c CONFIG`` (:func:`train`) reads ``<workdir>/locations.parquet`` and
``<workdir>/views/<name>/`` (row i of every store is locations row i), trains the views' encoders and the
coordinate encoder so that a location's view embedding and its coordinate embedding agree (symmetric
InfoNCE, see :mod:`geoembed.nn.losses`), and writes:

* ``<workdir>/train/``: ``config.yaml`` (resolved), ``metrics.jsonl`` / ``metrics.csv`` (per epoch: loss,
  held-out loss, held-out top-1/top-5 retrieval of each location among the validation locations from its
  views, temperature, time), ``checkpoint/`` (model + optimiser + best weights, safetensors; written
  atomically after every epoch; a killed run resumes from it);
* ``<workdir>/bundle/``: the coordinate encoder of the best epoch (see :mod:`geoembed.io.bundle`).

Validation holds out whole spatial blocks (``block_id``). A fixed seed gives identical results on CPU
(batch order and jitter come from per-epoch generators, so a resumed run equals an uninterrupted one).

Modules, by concern (each imports only those above it):

* :mod:`~geoembed.train.data`: locations and views in memory, normalisation, frozen-backbone feature
  cache, the spatial split;
* :mod:`~geoembed.train.model`: :class:`MultiViewModel` (every view encoder is built there), the
  coordinate encoder spec, the optimiser and the weight average (EMA);
* :mod:`~geoembed.train.checkpoint`: checkpoints (safetensors, atomic), the run fingerprint, reuse of a
  finished bundle;
* :mod:`~geoembed.train.step`: one step, :class:`StepRunner` (``torch.compile``, whole-step CUDA graph),
  data-parallel setup and gradient all-reduce;
* :mod:`~geoembed.train.loop`: the epoch loop, held-out evaluation, metrics files, early stopping, the bundle;
* :mod:`~geoembed.train.command`: ``geoembed train`` (``configure_parser`` / ``run``).
"""

from geoembed.train.checkpoint import BUNDLE_DIR, CHECKPOINT, RUN_DIR, load_checkpoint, save_checkpoint
from geoembed.train.checkpoint import run_fingerprint as _run_fingerprint  # noqa: F401 (the former private name)
from geoembed.train.command import configure_parser, run
from geoembed.train.data import (
    TrainData,
    ViewData,
    load_training_data,
    normalise_array,
    random_split,
    spatial_split,
)
from geoembed.train.loop import evaluate, train
from geoembed.train.model import (
    MultiViewModel,
    coordinate_spec,
    ema_update,
    make_optimizer,
    no_decay_parameters,
)
from geoembed.train.step import StepRunner, train_step
from geoembed.train.step import jitter_coordinates as _jitter  # noqa: F401 (the former private name)

__all__ = [
    "BUNDLE_DIR",
    "CHECKPOINT",
    "RUN_DIR",
    "MultiViewModel",
    "StepRunner",
    "TrainData",
    "ViewData",
    "configure_parser",
    "coordinate_spec",
    "ema_update",
    "evaluate",
    "load_checkpoint",
    "load_training_data",
    "make_optimizer",
    "no_decay_parameters",
    "normalise_array",
    "random_split",
    "run",
    "save_checkpoint",
    "spatial_split",
    "train",
    "train_step",
]
