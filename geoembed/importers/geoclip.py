"""``geoembed import geoclip``: GeoCLIP's pretrained location encoder as a geoembed bundle.

The weights are the plain state dict ``geoclip/model/weights/location_encoder_weights.pth`` of the
``geoclip`` wheel (MIT; install it with ``pip install --no-deps geoclip==1.3.0``: the rest of that
package needs transformers and is never imported here), or any file with the same layout given as
``weights``. The wheel's file is found through the installed distribution's file list
(``importlib.metadata``), which reads metadata only: ``importlib.util.find_spec("geoclip.model")``
would already run ``geoclip/__init__.py``.

Layout of the state dict (branch ``i`` = 0, 1, 2 for sigma = 1, 16, 256)::

    LocEnc{i}.capsule.0.b             (256, 2)      Gaussian projection B (its scale sigma is not stored)
    LocEnc{i}.capsule.{1,3,5}.weight  (1024, 512), (1024, 1024), (1024, 1024)   ReLU MLP
    LocEnc{i}.capsule.{1,3,5}.bias    (1024,)
    LocEnc{i}.head.0.weight / .bias   (512, 1024), (512,)

It maps onto :mod:`geoembed.nn.geoclip` (``equal_earth`` encoding + ``rff_branches`` network); the
sigmas go into the spec and are checked against the standard deviation of each B.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from geoembed.errors import InputError
from geoembed.nn.encodings import EARTH_RADIUS_M
from geoembed.nn.geoclip import EQUAL_EARTH

log = logging.getLogger(__name__)

DISTRIBUTION = "geoclip"
WHEEL_VERSION = "1.3.0"
WEIGHTS_IN_WHEEL = "geoclip/model/weights/location_encoder_weights.pth"
SIGMAS = (1.0, 16.0, 256.0)  # GeoCLIP's LocationEncoder default: 2**0, 2**4, 2**8
FEATURES = 256
HIDDEN = (1024, 1024, 1024)
OUTPUT_DIM = 512
_EE = EQUAL_EARTH
#: Projected units per radian at the equator: x per radian of longitude (1 / pi), y per radian of latitude.
_X_PER_RAD = 2 * math.sqrt(3) / (3 * _EE["A1"]) * _EE["SF"] / 180
_Y_PER_RAD = _EE["A1"] * _EE["SF"] / 180 * math.sqrt(3) / 2
#: Kilometres per projected unit near the equator: geometric mean of the x (20,015 km) and y (14,860 km) scales.
_KM_PER_UNIT = EARTH_RADIUS_M / 1000 / math.sqrt(_X_PER_RAD * _Y_PER_RAD)
TRAINING_DATA = ("MP-16: about 4.7 million geotagged Flickr images (MediaEval 2016 placing task); the location "
                 "encoder was trained contrastively against CLIP image features of those images")


def geoclip_spec(sigmas: Sequence[float] = SIGMAS) -> dict:
    """The coordinate-encoder spec of GeoCLIP's location encoder."""
    return {
        "encodings": [{"type": "equal_earth"}],
        "network": {"type": "rff_branches", "sigmas": [float(s) for s in sigmas], "features": FEATURES,
                    "hidden": list(HIDDEN)},
        "embedding_dim": OUTPUT_DIM,
        "dtype": "float32",
    }


def find_wheel_weights() -> tuple[Path, str, dict]:
    """The installed wheel's weight file, its version and licence/home page, without importing geoclip."""
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise InputError(f"the {DISTRIBUTION} wheel is not installed and no --weights file was given; install it "
                         f"without its dependencies (pip install --no-deps {DISTRIBUTION}=={WHEEL_VERSION}, as "
                         f"`make install` does) or pass --weights PATH") from None
    path = Path(dist.locate_file(WEIGHTS_IN_WHEEL))
    if not path.is_file():
        raise InputError(f"the installed {DISTRIBUTION} {dist.version} has no {WEIGHTS_IN_WHEEL} (looked at "
                         f"{path}); pass --weights PATH")
    md = dist.metadata
    urls = dict(u.split(", ", 1) for u in (md.get_all("Project-URL") or []) if ", " in u)
    about = {"licence": md.get("License-Expression") or md.get("License") or "MIT",
             "url": md.get("Home-page") or urls.get("Homepage") or urls.get("Repository") or ""}
    return path, dist.version, about


def expected_shapes(n_branches: int = len(SIGMAS)) -> dict[str, tuple[int, ...]]:
    """GeoCLIP's state-dict keys and shapes."""
    out: dict[str, tuple[int, ...]] = {}
    dims = [2 * FEATURES, *HIDDEN]
    for i in range(n_branches):
        out[f"LocEnc{i}.capsule.0.b"] = (FEATURES, 2)
        for j, k in enumerate((1, 3, 5)):
            out[f"LocEnc{i}.capsule.{k}.weight"] = (dims[j + 1], dims[j])
            out[f"LocEnc{i}.capsule.{k}.bias"] = (dims[j + 1],)
        out[f"LocEnc{i}.head.0.weight"] = (OUTPUT_DIM, HIDDEN[-1])
        out[f"LocEnc{i}.head.0.bias"] = (OUTPUT_DIM,)
    return out


def to_geoembed_state(state: dict[str, torch.Tensor], n_branches: int) -> dict[str, torch.Tensor]:
    """Rename GeoCLIP's keys to the :class:`RFFBranches` layout inside a coordinate encoder."""
    out = {}
    for i in range(n_branches):
        dst = f"network.branches.{i}"
        out[f"{dst}.rff"] = state[f"LocEnc{i}.capsule.0.b"]
        for j, k in enumerate((1, 3, 5)):
            for t in ("weight", "bias"):
                out[f"{dst}.layers.{j}.{t}"] = state[f"LocEnc{i}.capsule.{k}.{t}"]
        for t in ("weight", "bias"):
            out[f"{dst}.head.{t}"] = state[f"LocEnc{i}.head.0.{t}"]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def check_sigmas(state: dict[str, torch.Tensor], sigmas: Sequence[float], origin: str) -> list[float]:
    """Each B's standard deviation must be near its sigma (within a factor 1.5); returns the measured ones."""
    measured = []
    for i, sigma in enumerate(sigmas):
        key = f"LocEnc{i}.capsule.0.b"
        std = float(state[key].double().std())
        measured.append(std)
        if not (sigma / 1.5 <= std <= sigma * 1.5):
            raise InputError(f"{origin}: {key} has standard deviation {std:.4g}, but branch {i} is declared with "
                             f"sigma {sigma:g}: not GeoCLIP location-encoder weights for sigmas {list(sigmas)}?")
    return measured


def resolution_km(rff: torch.Tensor) -> float:
    """Half the wavelength (km) of the median frequency of a branch's projection (cycles per unit)."""
    freq = rff.double().norm(dim=1).median().item()
    return 0.5 * _KM_PER_UNIT / freq


def finest_wavelength_km(rff: torch.Tensor) -> float:
    """The shortest wavelength (km) among a branch's projection frequencies (cycles per unit): nothing in
    that branch's features varies over much less than this distance."""
    return _KM_PER_UNIT / rff.double().norm(dim=1).max().item()


def load_geoclip_encoder(weights: str | os.PathLike | None = None, sigmas: Sequence[float] = SIGMAS):
    """Build the encoder from GeoCLIP's weights (the wheel's file unless ``weights`` is given).

    Returns ``(encoder, card, weights_path)``; raises InputError naming the file and key for a file that
    is missing, pickled, or of another layout.
    """
    from geoembed.importers.common import check_shapes, load_torch_file, tensor_dict
    from geoembed.io.fingerprint import file_fingerprint
    from geoembed.nn.networks import build_coordinate_encoder

    sigmas = [float(s) for s in sigmas]
    if weights is None:
        path, version, about = find_wheel_weights()
        version_text = f"{DISTRIBUTION} {version} (weights file of the PyPI wheel)"
    else:
        path, version, about = Path(weights), None, {"licence": "MIT (GeoCLIP's licence)", "url": ""}
        version_text = "not recorded (weights given as a file; GeoCLIP layout)"
    origin = f"GeoCLIP weight file {path}"
    state = tensor_dict(load_torch_file(path, "GeoCLIP weight file"), origin)
    check_shapes(state, expected_shapes(len(sigmas)), origin)
    measured = check_sigmas(state, sigmas, origin)
    encoder = build_coordinate_encoder(geoclip_spec(sigmas))
    encoder.load_state_dict(to_geoembed_state(state, len(sigmas)), strict=True)
    encoder.eval()
    res = resolution_km(encoder.network.branches[-1].rff)
    card = {
        "source": ("GeoCLIP pretrained location encoder (Vivanco Cepeda, Nayak, Shah: GeoCLIP, NeurIPS 2023)"
                   + (f", {about['url']}" if about.get("url") else "") + f"; weights {path.name}"),
        "version": version_text,
        "licence": about["licence"],
        "training_data": TRAINING_DATA,
        "output_dim": OUTPUT_DIM,
        "effective_resolution": (f"about {res:.0f} km (half the median wavelength of the finest branch, sigma "
                                 f"{sigmas[-1]:g}); places closer than that get similar embeddings"),
        "effective_resolution_km": round(res, 1),
        "architecture": (f"Equal Earth projection, {len(sigmas)} random-Fourier-feature branches (sigma "
                         f"{', '.join(f'{s:g}' for s in sigmas)}; {FEATURES} frequencies each) with ReLU MLPs "
                         f"{'-'.join(str(h) for h in HIDDEN)} and linear heads to {OUTPUT_DIM}, summed"),
        "rff_std_measured": [round(s, 4) for s in measured],
        "coordinates": "lon/lat degrees by name (GeoCLIP itself takes lat, lon); seam at the antimeridian",
        "footprint": "global: no location is out of support",
        "weights_sha256": file_fingerprint(path),
    }
    if version is not None:
        card["package_version"] = version
    return encoder, card, path


def import_geoclip(output: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                   sigmas: Sequence[float] = SIGMAS, reduction=None, card_extra: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Write GeoCLIP's location encoder as a bundle at ``output`` (see module docstring)."""
    from geoembed.importers.common import write_imported_bundle

    encoder, card, path = load_geoclip_encoder(weights, sigmas)
    card |= card_extra or {}
    config = {"import": {"kind": "geoclip", "weights": str(Path(path).resolve()), "sigmas": list(sigmas)}}
    return write_imported_bundle(output, encoder, card=card, config=config, reduction_request=reduction,
                                 overwrite=overwrite, data_fingerprint=card["weights_sha256"])
