"""Positional encodings of (lon, lat): global spherical harmonics and a local multi-scale encoding.

Every encoding is a ``torch.nn.Module`` whose ``forward`` takes **keyword-only** ``lon`` and ``lat``
tensors in degrees (EPSG:4326) and returns ``(N, out_dim)`` features, so coordinates are always passed by
name and can never be swapped silently. Arrays that hold both columns must go through
:func:`lonlat_from_table`, which requires named columns.

Effective resolution (how close two places can be and still get clearly different features):

* :class:`SphericalHarmonics` with ``degrees=L`` (degrees ``0..L-1``, ``L**2`` features) resolves
  features of half-wavelength ``pi * R / L``: about 20,000 km / L, i.e. ~500 km at L = 40 and ~310 km
  at L = 64. Use it for continental or global models; it cannot separate places inside one city.
* :class:`LocalMultiScaleEncoding` (sinusoids over a geometric range of wavelengths in an azimuthal
  equidistant projection centred on the training footprint) resolves about half its finest
  wavelength, ``min_wavelength_m / 2``, and is unambiguous up to its longest wavelength
  ``max_wavelength_m``. Use it for city-to-country extents (e.g. 200 m .. 20 km for a city).

Both are deterministic functions of their spec (no learned parameters), so a bundle rebuilds them from
``spec`` alone; all constants that depend on the data (projection centre, wavelengths) live in the spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from geoembed.errors import ConfigError, InputError
from geoembed.nn.specs import SpecError, check_spec_args, describe_value

EARTH_RADIUS_M = 6_371_008.8
#: Sign conventions of real spherical harmonics that :class:`SphericalHarmonics` reproduces.
SH_CONVENTIONS = ("geoembed", "satclip-closed-form", "satclip-analytic")

__all__ = [
    "EARTH_RADIUS_M",
    "ConcatEncoding",
    "LocalMultiScaleEncoding",
    "SH_CONVENTIONS",
    "SphericalHarmonics",
    "build_encoding",
    "check_encoding_spec",
    "legendre_fourier_coefficients",
    "lonlat_from_table",
]


def lonlat_from_table(table, lon_col: str = "lon", lat_col: str = "lat") -> tuple[np.ndarray, np.ndarray]:
    """Pull ``lon`` and ``lat`` out of a table (DataFrame or mapping) by column name, as float64."""
    missing = [c for c in (lon_col, lat_col) if c not in table]
    if missing:
        raise InputError(f"table lacks coordinate column(s) {missing}; coordinates are taken by name")
    return np.asarray(table[lon_col], dtype=np.float64), np.asarray(table[lat_col], dtype=np.float64)


def legendre_fourier_coefficients(degrees: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fourier coefficients of the orthonormal associated Legendre functions in the polar angle.

    For every pair ``(l, m)``, ``0 <= m <= l < degrees``, the function
    ``Pbar_l^m(cos theta)`` (normalised so that ``Pbar_l^m(cos theta) e^{i m phi}`` is an orthonormal
    spherical harmonic, no Condon-Shortley phase) is a trigonometric polynomial of degree ``l`` in theta:
    a cosine series for even ``m`` and a sine series for odd ``m``. We sample it on ``2 * degrees``
    equispaced angles with the standard stable normalised recurrence (float64) and take an exact DFT.

    Returns ``(coef, l, m)``: ``coef`` has shape ``(2 * degrees, n_pairs)``: rows ``0..degrees-1`` multiply
    ``cos(k theta)``, rows ``degrees..2*degrees-1`` multiply ``sin(k theta)``; pairs are ordered by ``l``
    then ``m``. Evaluating ``[cos(k theta), sin(k theta)] @ coef`` is then one matrix product, exact to
    rounding (coefficients are O(sqrt(l)), so the error stays ~1e-14 in float64 for any L).
    """
    L = int(degrees)
    if L < 1:
        raise ConfigError(f"spherical harmonics need degrees >= 1, got {degrees}")
    K = 2 * L
    theta = 2.0 * np.pi * np.arange(K) / K
    x, s = np.cos(theta), np.sin(theta)  # signed sine: the trigonometric-polynomial extension
    # Sectoral terms Pbar_m^m = sqrt((2m+1)/(2m)) * s * Pbar_{m-1}^{m-1}, Pbar_0^0 = 1/sqrt(4 pi).
    pmm = np.empty((L, K))
    pmm[0] = 1.0 / np.sqrt(4.0 * np.pi)
    for m in range(1, L):
        pmm[m] = np.sqrt((2 * m + 1) / (2.0 * m)) * s * pmm[m - 1]
    values = np.empty((L * (L + 1) // 2, K))
    ms = np.arange(L, dtype=np.float64)
    prev2 = np.zeros((L, K))
    prev1 = np.zeros((L, K))
    row = 0
    for ell in range(L):  # one-time initialisation; nothing here runs per batch
        cur = np.zeros((L, K))
        if ell >= 2:
            mm = ms[: ell - 1]
            a = np.sqrt((4.0 * ell**2 - 1.0) / (ell**2 - mm**2))
            b = np.sqrt(((ell - 1.0) ** 2 - mm**2) / (4.0 * (ell - 1.0) ** 2 - 1.0))
            cur[: ell - 1] = a[:, None] * (x * prev1[: ell - 1] - b[:, None] * prev2[: ell - 1])
        if ell >= 1:
            cur[ell - 1] = np.sqrt(2.0 * ell + 1.0) * x * pmm[ell - 1]
        cur[ell] = pmm[ell]
        values[row : row + ell + 1] = cur[: ell + 1]
        row += ell + 1
        prev2, prev1 = prev1, cur
    spec = np.fft.rfft(values, axis=1) / K  # (n_pairs, K//2 + 1)
    coef = np.zeros((2 * L, values.shape[0]))
    coef[0] = spec[:, 0].real
    coef[1:L] = 2.0 * spec[:, 1:L].real.T
    coef[L + 1 : 2 * L] = -2.0 * spec[:, 1:L].imag.T
    ls = np.concatenate([np.full(ell + 1, ell) for ell in range(L)])
    mvals = np.concatenate([np.arange(ell + 1) for ell in range(L)])
    coef[np.abs(coef) < 1e-15 * np.abs(coef).max()] = 0.0
    return coef, ls, mvals


class SphericalHarmonics(nn.Module):
    """Real orthonormal spherical harmonics ``Y_l^m(lat, lon)`` for degrees ``0..degrees-1``.

    Output: ``(N, degrees**2)`` in the order ``l = 0..L-1``, ``m = -l..l`` (index ``l*l + l + m``);
    ``m > 0`` uses ``sqrt(2) Pbar_l^m cos(m lon)``, ``m < 0`` uses ``sqrt(2) Pbar_l^|m| sin(|m| lon)``.
    Evaluation is one matmul of ``[cos k theta, sin k theta]`` with precomputed Fourier coefficients
    (see :func:`legendre_fourier_coefficients`) followed by one gather-multiply with the longitude
    harmonics: no loop over degrees, exact at the poles and continuous across the antimeridian.

    Effective resolution: ~20,000 km / L (e.g. ~500 km at L = 40).

    ``convention`` reproduces other codes' real harmonics (same order and normalisation, other signs):

    * ``"satclip-closed-form"`` (SatCLIP's ``closed-form``: polar angle ``lat + 90``, azimuth
      ``lon + 180``, Condon-Shortley phase): column ``(l, m)`` times ``(-1)**(l + |m|)``;
    * ``"satclip-analytic"`` (SatCLIP's sympy-generated ``analytic`` functions, same angles, the phase
      cancelled by their ``(-1)**m``): column ``(l, m)`` times ``(-1)**l``.

    ``m0_scale`` multiplies the ``m = 0`` columns (SatCLIP's generated ``analytic`` functions carry a
    factor pi there: ``sqrt((2l+1)/4 * pi)`` where ``sqrt((2l+1)/(4 pi))`` is meant).
    """

    def __init__(self, degrees: int, convention: str = "geoembed", m0_scale: float = 1.0):
        super().__init__()
        self.degrees = int(degrees)
        if convention not in SH_CONVENTIONS:
            raise ConfigError(f"spherical_harmonics convention must be one of {SH_CONVENTIONS}, got {convention!r}")
        if not (math.isfinite(float(m0_scale)) and float(m0_scale) != 0.0):
            raise ConfigError(f"spherical_harmonics m0_scale must be a finite non-zero number, got {m0_scale!r}")
        self.convention = convention
        self.m0_scale = float(m0_scale)
        coef, ls, ms = legendre_fourier_coefficients(self.degrees)
        L = self.degrees
        self.register_buffer("coef", torch.from_numpy(coef), persistent=False)
        self.register_buffer("k", torch.arange(L, dtype=torch.float64), persistent=False)
        factor = np.where(np.arange(L) == 0, 1.0, np.sqrt(2.0))
        self.register_buffer("trig_factor", torch.from_numpy(np.concatenate([factor, factor])),
                             persistent=False)
        # Output column -> (pair column, longitude trig column).
        pair_of = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(ls, ms, strict=True))}
        pair_idx, trig_idx = [], []
        for ell in range(L):
            for m in range(-ell, ell + 1):
                pair_idx.append(pair_of[(ell, abs(m))])
                trig_idx.append(m if m >= 0 else L + (-m))
        self.register_buffer("pair_idx", torch.tensor(pair_idx, dtype=torch.long), persistent=False)
        self.register_buffer("trig_idx", torch.tensor(trig_idx, dtype=torch.long), persistent=False)
        # Up to L = 128 the coefficient columns are laid out in output order, so the Legendre part comes
        # straight out of the matmul (no gather; ~1.5x faster on CPU); beyond, memory would grow as L^3.
        self._direct = L <= 128
        if self._direct:
            self.register_buffer("coef_out", self.coef[:, self.pair_idx].contiguous(), persistent=False)
        # Other codes' conventions: a fixed factor per output column (signs are exact in any dtype).
        self._scaled = convention != "geoembed" or self.m0_scale != 1.0
        if self._scaled:
            ell = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
            m = np.concatenate([np.arange(-k, k + 1) for k in range(L)])
            power = ell + np.abs(m) if convention == "satclip-closed-form" else ell
            scale = np.where(power % 2 == 0, 1.0, -1.0) if convention != "geoembed" else np.ones(L * L)
            scale[m == 0] *= self.m0_scale
            self.register_buffer("col_scale", torch.from_numpy(scale), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.degrees**2

    def spec(self) -> dict:
        out: dict = {"type": "spherical_harmonics", "degrees": self.degrees}
        if self.convention != "geoembed":
            out["convention"] = self.convention
        if self.m0_scale != 1.0:
            out["m0_scale"] = self.m0_scale
        return out

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        dtype = self.coef.dtype
        theta = torch.deg2rad(90.0 - lat.to(dtype))
        phi = torch.deg2rad(lon.to(dtype))
        kt = theta[:, None] * self.k
        kp = phi[:, None] * self.k
        basis = torch.cat([torch.cos(kt), torch.sin(kt)], dim=1)  # (N, 2L)
        trig = (torch.cat([torch.cos(kp), torch.sin(kp)], dim=1) * self.trig_factor).index_select(1, self.trig_idx)
        if not self._direct:
            out = (basis @ self.coef).index_select(1, self.pair_idx) * trig
        else:
            out = basis @ self.coef_out  # (N, L^2) Legendre factors in output order
            out = out * trig if torch.is_grad_enabled() else out.mul_(trig)
        if self._scaled:
            out = out * self.col_scale if torch.is_grad_enabled() else out.mul_(self.col_scale)
        return out


class LocalMultiScaleEncoding(nn.Module):
    """Sinusoids over a geometric range of wavelengths in a local metric projection.

    Coordinates are projected with a spherical azimuthal equidistant projection centred on
    ``(center_lon, center_lat)`` (distances from the centre are exact; at 300 km the scale error is
    ~0.1%), computed with haversine-style formulas that stay accurate in float32 because the centre is
    subtracted in float64 first. Features are ``sin``/``cos`` of ``2 pi (u_j . xy) / lambda_i`` for
    ``n_scales`` wavelengths ``lambda_i`` from ``min_wavelength_m`` to ``max_wavelength_m`` (geometric)
    and ``n_directions`` unit vectors ``u_j`` at angles ``pi j / n_directions``; optionally the projected
    ``x, y`` scaled by ``max_wavelength_m``.

    Effective resolution: about ``min_wavelength_m / 2``; features repeat beyond ``max_wavelength_m``.
    Capping ``min_wavelength_m`` is the main guard against memorising location identity.
    """

    def __init__(
        self,
        *,
        center_lon: float,
        center_lat: float,
        min_wavelength_m: float,
        max_wavelength_m: float,
        n_scales: int = 16,
        n_directions: int = 3,
        include_xy: bool = True,
    ):
        super().__init__()
        if not (0 < min_wavelength_m <= max_wavelength_m):
            raise ConfigError(
                f"local encoding needs 0 < min_wavelength_m <= max_wavelength_m, got {min_wavelength_m}, "
                f"{max_wavelength_m}"
            )
        if n_scales < 1 or n_directions < 1:
            raise ConfigError("local encoding needs n_scales >= 1 and n_directions >= 1")
        if not (-180 <= center_lon <= 180 and -90 < center_lat < 90):
            raise ConfigError(f"local encoding centre ({center_lon}, {center_lat}) is not lon/lat degrees")
        self.center_lon = float(center_lon)
        self.center_lat = float(center_lat)
        self.min_wavelength_m = float(min_wavelength_m)
        self.max_wavelength_m = float(max_wavelength_m)
        self.n_scales = int(n_scales)
        self.n_directions = int(n_directions)
        self.include_xy = bool(include_xy)
        wl = np.geomspace(self.min_wavelength_m, self.max_wavelength_m, self.n_scales)
        ang = np.pi * np.arange(self.n_directions) / self.n_directions
        u = np.stack([np.cos(ang), np.sin(ang)], axis=1)  # (D, 2)
        w = (2.0 * np.pi / wl)[:, None, None] * u[None]  # (S, D, 2)
        self.register_buffer("freq", torch.from_numpy(w.reshape(-1, 2).T.copy()), persistent=False)
        self.register_buffer("lat0", torch.tensor(math.radians(self.center_lat), dtype=torch.float64),
                             persistent=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.n_scales * self.n_directions + (2 if self.include_xy else 0)

    def spec(self) -> dict:
        return {
            "type": "local_multiscale",
            "center_lon": self.center_lon,
            "center_lat": self.center_lat,
            "min_wavelength_m": self.min_wavelength_m,
            "max_wavelength_m": self.max_wavelength_m,
            "n_scales": self.n_scales,
            "n_directions": self.n_directions,
            "include_xy": self.include_xy,
        }

    def project(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Azimuthal equidistant ``(N, 2)`` x/y in metres around the centre (dtype of ``self.freq``)."""
        dtype = self.freq.dtype
        # Differences in float64 (or the input's precision), then the working dtype.
        wide = torch.float64 if lon.dtype == torch.float64 else lon.dtype
        dlon = lon.to(wide) - self.center_lon
        dlon = torch.remainder(dlon + 180.0, 360.0) - 180.0  # across the antimeridian
        dlat = lat.to(wide) - self.center_lat
        dl = torch.deg2rad(dlon.to(dtype))
        dp = torch.deg2rad(dlat.to(dtype))
        lat0 = self.lat0.to(dtype)
        phi = lat0 + dp
        cphi, cphi0, sphi0 = torch.cos(phi), torch.cos(lat0), torch.sin(lat0)
        sdl2 = torch.sin(dl * 0.5)
        hav = torch.sin(dp * 0.5) ** 2 + cphi * cphi0 * sdl2**2
        c = 2.0 * torch.asin(torch.sqrt(hav.clamp(0.0, 1.0)))
        sinc = torch.sin(c)
        small = c < 1e-4
        k = torch.where(small, 1.0 + c * c / 6.0, c / torch.where(small, torch.ones_like(sinc), sinc))
        x = k * cphi * torch.sin(dl)
        y = k * (torch.sin(dp) + sphi0 * cphi * 2.0 * sdl2**2)
        return torch.stack([x, y], dim=1) * EARTH_RADIUS_M

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        xy = self.project(lon=lon, lat=lat)
        arg = xy @ self.freq
        parts = [torch.sin(arg), torch.cos(arg)]
        if self.include_xy:
            parts.append(xy / self.max_wavelength_m)
        return torch.cat(parts, dim=1)


class ConcatEncoding(nn.Module):
    """Several encodings side by side (concatenated features)."""

    def __init__(self, encodings: list[nn.Module]):
        super().__init__()
        if not encodings:
            raise ConfigError("a coordinate encoder needs at least one encoding")
        self.parts = nn.ModuleList(encodings)

    @property
    def out_dim(self) -> int:
        return sum(p.out_dim for p in self.parts)

    def spec(self) -> list[dict]:
        return [p.spec() for p in self.parts]

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        outs = [p(lon=lon, lat=lat) for p in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def check_encoding_spec(spec: object) -> tuple[type, dict]:
    """The encoding class of ``spec`` and its keyword arguments, checked strictly against the class's
    constructor (:func:`geoembed.nn.specs.check_spec_args`; ranges are the constructor's). Raises a
    :class:`~geoembed.nn.specs.SpecError` naming the key."""
    if not isinstance(spec, Mapping):
        raise SpecError("", f"expected an object (an encoding spec), got {describe_value(spec)}")
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind == "spherical_harmonics":
        cls = SphericalHarmonics
    elif kind == "local_multiscale":
        cls = LocalMultiScaleEncoding
    elif kind == "equal_earth":
        from geoembed.nn.geoclip import EqualEarth

        cls = EqualEarth
    else:
        raise SpecError("type", f"unknown encoding type {describe_value(kind)} (use spherical_harmonics, "
                                f"local_multiscale or equal_earth)")
    check_spec_args(f"{kind} encoding", cls, kwargs)
    return cls, kwargs


def build_encoding(spec: Mapping) -> nn.Module:
    """One encoding from its spec dict (``{"type": "spherical_harmonics" | "local_multiscale" |
    "equal_earth", ...}``; ``equal_earth`` is GeoCLIP's projection, :mod:`geoembed.nn.geoclip`),
    checked by :func:`check_encoding_spec` first."""
    cls, kwargs = check_encoding_spec(spec)
    return cls(**kwargs)
