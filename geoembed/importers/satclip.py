"""``geoembed import satclip CKPT``: a SatCLIP-format location encoder as a geoembed bundle.

SatCLIP (Klemmer et al., AAAI 2025) and the seed paper's released models are PyTorch Lightning
checkpoints: a dict with ``hyper_parameters`` (the module's init arguments) and ``state_dict``. Their
location encoder is real spherical harmonics with ``L = legendre_polys`` Legendre polynomials (degrees
``0..L-1``, ``L**2`` features, ordered by ``l`` then ``m = -l..l``) of (lon, lat), followed by a SIREN:
``num_hidden_layers`` sine layers of width ``capacity`` (first frequency 30, then 1, fixed in SatCLIP's
code) and a linear layer to ``embed_dim``; the whole location model runs in float64.

What is read from the checkpoint (and checked against the tensors' shapes): ``le_type`` (must be
``sphericalharmonics``), ``harmonics_calculation`` (``closed-form`` or ``analytic``: they differ in
signs and, for ``analytic``, a factor pi on the ``m = 0`` terms; see
:class:`geoembed.nn.encodings.SphericalHarmonics`), ``legendre_polys``, ``pe_type`` (must be
``siren``), ``capacity``, ``num_hidden_layers``, ``embed_dim``; the dtype comes from the tensors.
Hyper-parameters of the image encoder, the optimiser or other positional encodings are ignored; any
other key is an error naming it (it might change the location encoder), unless listed in
``ignore_hparams``.

Loading never runs pickled code (:func:`geoembed.importers.common.load_torch_file`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from geoembed.errors import InputError

log = logging.getLogger(__name__)

HARMONICS = {"closed-form": "satclip-closed-form", "analytic": "satclip-analytic"}
SIREN_W0, SIREN_W0_HIDDEN = 30.0, 1.0  # SatCLIP's SirenNet defaults (not hyper-parameters)
LOCATION_HPARAMS = ("le_type", "harmonics_calculation", "legendre_polys", "pe_type", "capacity",
                    "num_hidden_layers", "embed_dim")
#: Hyper-parameters that do not change a spherical-harmonics + SIREN location encoder.
IGNORED_HPARAMS = frozenset({
    "frequency_num", "max_radius", "min_radius",  # other positional encodings only
    "sh_embedding_dims",  # unused by SatCLIP's model
    "image_resolution", "vision_layers", "vision_width", "vision_patch_size", "in_channels",  # image side
    "learning_rate", "weight_decay", "eval_downstream", "air_temp_data_path", "election_data_path",
})
PREFERRED_PREFIXES = ("model.location.nnet.", "model.nnet.", "location.nnet.", "nnet.")
TRAINING_DATA = ("not recorded in the checkpoint (SatCLIP's released models: S2-100K, 100,000 Sentinel-2 "
                 "tiles sampled across the landmass); set it with --card")
LICENCE = "not recorded in the checkpoint (SatCLIP's code and released models are MIT); set it with --card"


def _int(hp: Mapping, key: str, origin: str, low: int = 1) -> int:
    v = hp.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InputError(f"{origin}: hyper-parameter {key}={v!r} is not an integer >= {low}")
    return v


def read_hparams(ckpt: Mapping, origin: str, ignore: Iterable[str] = ()) -> dict:
    """The location encoder's hyper-parameters, validated (InputError names the file and key)."""
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        raise InputError(f"{origin} has no hyper_parameters dict: not a SatCLIP-format (Lightning) checkpoint")
    ignore = set(ignore)
    unknown = sorted(str(k) for k in hp if k not in LOCATION_HPARAMS and k not in IGNORED_HPARAMS and k not in ignore)
    if unknown:
        raise InputError(f"{origin}: unknown hyper-parameter(s) {unknown}; geoembed cannot tell whether they change "
                         f"the location encoder (pass --ignore-hparam NAME for each one known to be harmless)")
    missing = [k for k in LOCATION_HPARAMS if k not in hp]
    if missing:
        raise InputError(f"{origin}: hyper_parameters lack {missing} (a SatCLIP location encoder needs "
                         f"{list(LOCATION_HPARAMS)})")
    if hp["le_type"] != "sphericalharmonics":
        raise InputError(f"{origin}: hyper-parameter le_type={hp['le_type']!r}; only 'sphericalharmonics' "
                         f"location encoders can be imported")
    if hp["harmonics_calculation"] not in HARMONICS:
        raise InputError(f"{origin}: hyper-parameter harmonics_calculation={hp['harmonics_calculation']!r}; "
                         f"supported: {sorted(HARMONICS)}")
    if hp["pe_type"] != "siren":
        raise InputError(f"{origin}: hyper-parameter pe_type={hp['pe_type']!r}; only 'siren' networks can be "
                         f"imported")
    return {"le_type": hp["le_type"], "harmonics_calculation": hp["harmonics_calculation"],
            "legendre_polys": _int(hp, "legendre_polys", origin), "pe_type": "siren",
            "capacity": _int(hp, "capacity", origin), "num_hidden_layers": _int(hp, "num_hidden_layers", origin),
            "embed_dim": _int(hp, "embed_dim", origin)}


def _find_prefix(state: Mapping[str, torch.Tensor], origin: str, prefix: str | None) -> str:
    """The key prefix of the SIREN's tensors (copies under several prefixes must be identical)."""
    if prefix is not None:
        if not any(k.startswith(prefix) for k in state):
            raise InputError(f"{origin}: no state_dict key starts with {prefix!r}")
        return prefix
    found = sorted({m.group(1) for k in state if (m := re.match(r"(.*?nnet\.)layers\.0\.weight$", k))})
    if not found:
        raise InputError(f"{origin}: state_dict has no '...nnet.layers.0.weight': no SatCLIP location network "
                         f"(pass --prefix if its keys are named otherwise)")
    chosen = next((p for p in PREFERRED_PREFIXES if p in found), found[0])
    for other in found:
        keys = [k for k in state if k.startswith(chosen)]
        if other != chosen and not all(
                (other + k[len(chosen):]) in state and torch.equal(state[other + k[len(chosen):]], state[k])
                for k in keys):
            raise InputError(f"{origin}: location networks under both {chosen!r} and {other!r} differ; pass "
                             f"--prefix to choose one")
    return chosen


def siren_state(state: Mapping[str, torch.Tensor], hp: dict, origin: str, prefix: str | None = None):
    """The SIREN's tensors renamed for geoembed's ``Siren`` (``network.net.{2i}``), and their dtype."""
    from geoembed.importers.common import check_shapes

    pre = _find_prefix(state, origin, prefix)
    L2, cap, nh, out = hp["legendre_polys"] ** 2, hp["capacity"], hp["num_hidden_layers"], hp["embed_dim"]
    expected: dict[str, tuple[int, ...]] = {}
    mapping: dict[str, str] = {}
    for i in range(nh):
        for t, shape in (("weight", (cap, L2 if i == 0 else cap)), ("bias", (cap,))):
            expected[f"{pre}layers.{i}.{t}"] = shape
            mapping[f"{pre}layers.{i}.{t}"] = f"network.net.{2 * i}.{t}"
    for t, shape in (("weight", (out, cap)), ("bias", (out,))):
        expected[f"{pre}last_layer.{t}"] = shape
        mapping[f"{pre}last_layer.{t}"] = f"network.net.{2 * nh}.{t}"
    sub = {k: v for k, v in state.items() if k.startswith(pre)}
    check_shapes(sub, expected, f"{origin} (state_dict under {pre!r})")
    dtypes = {v.dtype for v in sub.values()}
    if dtypes - {torch.float32, torch.float64} or len(dtypes) != 1:
        raise InputError(f"{origin}: location-network tensors have dtypes {sorted(map(str, dtypes))}; expected all "
                         f"float64 (SatCLIP) or all float32")
    dtype = dtypes.pop()
    return {mapping[k]: v.contiguous() for k, v in sub.items()}, ("float64" if dtype == torch.float64 else "float32")


def satclip_spec(hp: dict, dtype: str, analytic_m0_scale: float = math.pi) -> dict:
    """The coordinate-encoder spec of a SatCLIP location encoder."""
    enc = {"type": "spherical_harmonics", "degrees": hp["legendre_polys"],
           "convention": HARMONICS[hp["harmonics_calculation"]]}
    if hp["harmonics_calculation"] == "analytic" and analytic_m0_scale != 1.0:
        enc["m0_scale"] = float(analytic_m0_scale)
    return {"encodings": [enc],
            "network": {"type": "siren", "hidden": [hp["capacity"]] * hp["num_hidden_layers"], "w0": SIREN_W0,
                        "w0_hidden": SIREN_W0_HIDDEN},
            "embedding_dim": hp["embed_dim"], "dtype": dtype}


def load_satclip_encoder(ckpt_path: str | os.PathLike, *, prefix: str | None = None,
                         ignore_hparams: Iterable[str] = (), analytic_m0_scale: float = math.pi):
    """Build the encoder of a SatCLIP-format checkpoint. Returns ``(encoder, card, hparams)``."""
    from geoembed.importers.common import load_torch_file, tensor_dict
    from geoembed.io.fingerprint import file_fingerprint
    from geoembed.nn.networks import build_coordinate_encoder

    path = Path(ckpt_path)
    origin = f"SatCLIP checkpoint {path}"
    ckpt = load_torch_file(path, "SatCLIP checkpoint")
    if not isinstance(ckpt, Mapping):
        raise InputError(f"{origin} holds a {type(ckpt).__name__}, not a checkpoint dict")
    hp = read_hparams(ckpt, origin, ignore_hparams)
    if "state_dict" not in ckpt:
        raise InputError(f"{origin} has no state_dict")
    state = tensor_dict(ckpt["state_dict"], f"{origin}: state_dict")
    weights, dtype = siren_state(state, hp, origin, prefix)
    spec = satclip_spec(hp, dtype, analytic_m0_scale)
    encoder = build_coordinate_encoder(spec)
    encoder.load_state_dict({k: v.to(encoder.dtype) for k, v in weights.items()}, strict=True)
    encoder.eval()
    L = hp["legendre_polys"]
    res = 20_000.0 / L
    about = ", ".join(f"{k} {ckpt[k]}" for k in ("pytorch-lightning_version", "epoch", "global_step") if k in ckpt)
    harm = hp["harmonics_calculation"]
    sha = file_fingerprint(path)
    card = {
        "source": f"SatCLIP-format checkpoint {path.name}" + (f" ({about})" if about else ""),
        "version": f"not recorded in the checkpoint; file {sha}",
        "licence": LICENCE,
        "training_data": TRAINING_DATA,
        "output_dim": hp["embed_dim"],
        "effective_resolution": (f"about {res:,.0f} km (spherical harmonics of degrees 0..{L - 1}: ~20,000 km / L "
                                 f"with L = {L}); places closer than that get similar embeddings"),
        "effective_resolution_km": round(res, 1),
        "architecture": (f"real spherical harmonics ({harm}, L = {L}, {L * L} features), SIREN "
                         f"{'-'.join([str(hp['capacity'])] * hp['num_hidden_layers'])} (w0 {SIREN_W0:g}, then "
                         f"{SIREN_W0_HIDDEN:g}) to {hp['embed_dim']}, {dtype}"),
        "harmonics": (f"SatCLIP '{harm}': polar angle lat + 90, azimuth lon + 180"
                      + (f"; m = 0 terms times {analytic_m0_scale:.6g} as in SatCLIP's generated functions"
                         if harm == "analytic" and analytic_m0_scale != 1.0 else "")),
        "hyper_parameters": hp,
        "coordinates": "lon/lat degrees by name",
        "weights_sha256": sha,
    }
    return encoder, card, hp


def import_satclip(ckpt_path: str | os.PathLike, output: str | os.PathLike, *, prefix: str | None = None,
                   ignore_hparams: Iterable[str] = (), analytic_m0_scale: float = math.pi, reduction=None,
                   card_extra: dict | None = None, footprint=None, out_of_support_km: float = 0.0,
                   overwrite: bool = False) -> Path:
    """Write the location encoder of a SatCLIP-format checkpoint as a bundle at ``output`` (``footprint``:
    the training region as a shapely geometry, default global)."""
    from geoembed.importers.common import write_imported_bundle

    encoder, card, hp = load_satclip_encoder(ckpt_path, prefix=prefix, ignore_hparams=ignore_hparams,
                                             analytic_m0_scale=analytic_m0_scale)
    card |= card_extra or {}
    config = {"import": {"kind": "satclip", "checkpoint": str(Path(ckpt_path).resolve()), "prefix": prefix,
                         "analytic_m0_scale": analytic_m0_scale, "hyper_parameters": hp}}
    return write_imported_bundle(output, encoder, card=card, config=config, reduction_request=reduction,
                                 footprint=footprint, out_of_support_km=out_of_support_km, overwrite=overwrite,
                                 data_fingerprint=card["weights_sha256"])
