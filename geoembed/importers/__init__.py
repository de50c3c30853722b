"""Importers: someone else's location encoder as an ordinary geoembed bundle (spec + safetensors + model card).

* :mod:`geoembed.importers.geoclip` - GeoCLIP's pretrained location encoder (``geoembed import geoclip``).
* :mod:`geoembed.importers.satclip` - SatCLIP-format checkpoints (``geoembed import satclip CKPT``).
* :mod:`geoembed.importers.reduce` - a PCA reduction shipped inside a bundle (``--components K``), also for
  trained bundles (``geoembed import bundle SRC``).
* :mod:`geoembed.importers.common` - loading PyTorch files without running pickled code, writing bundles.

After import nothing downstream knows where an encoder came from: ``enrich`` and ``LocationEmbedder``
load it like any bundle.
"""

from __future__ import annotations

from geoembed.importers.command import configure_parser, run

__all__ = ["configure_parser", "run"]
