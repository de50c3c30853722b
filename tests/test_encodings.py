"""Positional encodings: spherical harmonics against scipy, poles/antimeridian, local encoding, naming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from geoembed.errors import ConfigError, InputError
from geoembed.nn.encodings import (
    ConcatEncoding,
    LocalMultiScaleEncoding,
    SphericalHarmonics,
    build_encoding,
    lonlat_from_table,
)


def _scipy_real_sh(L: int, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Real orthonormal SH from scipy's complex ones (scipy includes the Condon-Shortley phase)."""
    theta, phi = np.deg2rad(90.0 - lat), np.deg2rad(lon)
    out = np.empty((lon.size, L * L))
    for ell in range(L):
        for m in range(-ell, ell + 1):
            y = sph_harm_y(ell, abs(m), theta, phi)
            if m > 0:
                v = np.sqrt(2) * (-1) ** m * y.real
            elif m < 0:
                v = np.sqrt(2) * (-1) ** m * y.imag
            else:
                v = y.real
            out[:, ell * ell + ell + m] = v
    return out


def _points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lon = np.concatenate([rng.uniform(-180, 180, n), [180.0, -180.0, 0.0, 12.5, -77.0, 179.9999]])
    lat = np.concatenate([rng.uniform(-90, 90, n), [90.0, -90.0, 0.0, 89.99999, -89.99999, 45.0]])
    return lon, lat


@pytest.mark.parametrize("L", [1, 2, 9, 65])
def test_harmonics_match_scipy_float64(L):
    lon, lat = _points(120)
    sh = SphericalHarmonics(L)
    got = sh(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).numpy()
    assert got.shape == (lon.size, L * L) and sh.out_dim == L * L
    np.testing.assert_allclose(got, _scipy_real_sh(L, lon, lat), rtol=0, atol=1e-10)


def test_harmonics_orthonormal_by_quadrature():
    """Gauss-Legendre x uniform quadrature of Y_i Y_j over the sphere is the identity."""
    L = 12
    x, w = np.polynomial.legendre.leggauss(L + 1)
    lat = np.rad2deg(np.arcsin(x))
    lon = np.linspace(-180, 180, 2 * L + 2, endpoint=False)
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    W = np.repeat(w, lon.size) * (2 * np.pi / lon.size)
    Y = SphericalHarmonics(L)(lon=torch.from_numpy(LON.ravel()), lat=torch.from_numpy(LAT.ravel())).numpy()
    np.testing.assert_allclose((Y * W[:, None]).T @ Y, np.eye(L * L), atol=1e-12)


def test_harmonics_high_degree_finite_and_float32_close():
    lon, lat = _points(200, seed=1)
    sh = SphericalHarmonics(128)
    y64 = sh(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat))
    assert torch.isfinite(y64).all()
    y32 = SphericalHarmonics(128).float()(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat))
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max() < 1e-3


def test_harmonics_antimeridian_and_poles():
    sh = SphericalHarmonics(20)
    a = sh(lon=torch.tensor([180.0, 10.0, -50.0]), lat=torch.tensor([33.0, 90.0, -90.0]))
    b = sh(lon=torch.tensor([-180.0, -120.0, 70.0]), lat=torch.tensor([33.0, 90.0, -90.0]))
    # The same point: across the antimeridian, and the pole seen from any longitude.
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_no_python_loop_per_batch_structure():
    """Evaluation is index/coefficient tensors only: buffers are precomputed at construction."""
    sh = SphericalHarmonics(40)
    assert sh.coef.shape == (80, 40 * 41 // 2)
    assert sh.pair_idx.shape == (1600,) and sh.trig_idx.shape == (1600,)


def test_swapping_lon_lat_changes_output():
    lon, lat = torch.tensor([-34.87, 24.94]), torch.tensor([-7.99, 60.17])
    for enc in (SphericalHarmonics(10),
                LocalMultiScaleEncoding(center_lon=0.0, center_lat=0.0, min_wavelength_m=1e3,
                                        max_wavelength_m=1e7)):
        a = enc(lon=lon, lat=lat)
        b = enc(lon=lat, lat=lon)
        assert (a - b).abs().max() > 1e-3
    with pytest.raises(TypeError):
        SphericalHarmonics(4)(lon, lat)  # positional coordinates are refused


def test_lonlat_from_table_requires_names():
    import pandas as pd

    lon, lat = lonlat_from_table(pd.DataFrame({"lat": [1.0], "lon": [2.0]}))
    assert lon[0] == 2.0 and lat[0] == 1.0
    with pytest.raises(InputError, match="lon"):
        lonlat_from_table(pd.DataFrame({"x": [1.0], "lat": [2.0]}))


def test_local_projection_distances():
    """Azimuthal equidistant: distance from the centre is the great-circle distance, in float32 too."""
    enc = LocalMultiScaleEncoding(center_lon=-34.87, center_lat=-7.99, min_wavelength_m=100,
                                  max_wavelength_m=20_000)
    rng = np.random.default_rng(0)
    lon = -34.87 + rng.uniform(-0.1, 0.1, 100)
    lat = -7.99 + rng.uniform(-0.1, 0.1, 100)
    xy = enc.project(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).numpy()
    p1, p2 = np.deg2rad(lat), np.deg2rad(-7.99)
    dl = np.deg2rad(lon + 34.87)
    hav = np.sin((p1 - p2) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    d = 2 * 6_371_008.8 * np.arcsin(np.sqrt(hav))
    np.testing.assert_allclose(np.hypot(xy[:, 0], xy[:, 1]), d, rtol=1e-9, atol=1e-6)
    assert (np.sign(xy[:, 0]) == np.sign(lon + 34.87)).all()  # east is +x
    assert (np.sign(xy[:, 1]) == np.sign(lat + 7.99)).all()  # north is +y
    xy32 = enc.float().project(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).numpy()
    assert np.abs(xy32 - xy).max() < 0.05  # centimetres in float32 (centre subtracted in float64)


def test_local_encoding_resolution_and_dims():
    enc = LocalMultiScaleEncoding(center_lon=0.0, center_lat=0.0, min_wavelength_m=200,
                                  max_wavelength_m=20_000, n_scales=8, n_directions=3)
    assert enc.out_dim == 2 * 8 * 3 + 2
    # Points 20 m apart are close in feature space, points 100 m apart (half the finest wavelength) are not.
    m = 1 / 111_320
    f = enc(lon=torch.tensor([0.0, 20 * m, 100 * m]), lat=torch.zeros(3, dtype=torch.float64))
    near, far = (f[0] - f[1]).norm(), (f[0] - f[2]).norm()
    assert far > 2.5 * near
    # Across the antimeridian the projection is continuous.
    e2 = LocalMultiScaleEncoding(center_lon=179.99, center_lat=0.0, min_wavelength_m=200,
                                 max_wavelength_m=20_000)
    a = e2(lon=torch.tensor([179.9999995], dtype=torch.float64), lat=torch.zeros(1))  # 11 cm apart
    b = e2(lon=torch.tensor([-179.9999995], dtype=torch.float64), lat=torch.zeros(1))
    assert (a - b).abs().max() < 0.01


def test_build_encoding_and_concat():
    spec = [{"type": "spherical_harmonics", "degrees": 4},
            {"type": "local_multiscale", "center_lon": 1.0, "center_lat": 2.0, "min_wavelength_m": 10.0,
             "max_wavelength_m": 1e4, "n_scales": 2, "n_directions": 2, "include_xy": False}]
    enc = ConcatEncoding([build_encoding(s) for s in spec])
    assert enc.out_dim == 16 + 8
    assert enc.spec() == spec
    out = enc(lon=torch.tensor([1.0, 1.01]), lat=torch.tensor([2.0, 2.0]))
    assert out.shape == (2, 24)
    with pytest.raises(ConfigError):
        build_encoding({"type": "fourier"})
    with pytest.raises(ConfigError):
        build_encoding({"type": "local_multiscale", "center_lon": 0, "center_lat": 0,
                        "min_wavelength_m": 10, "max_wavelength_m": 1})


def test_harmonics_gather_path_equals_direct_path():
    """High L uses compact coefficients + a gather instead of output-ordered coefficients: same values."""
    lon, lat = _points(50, seed=3)
    sh = SphericalHarmonics(30)
    direct = sh(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat))
    sh._direct = False
    gathered = sh(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat))
    torch.testing.assert_close(direct, gathered, rtol=0, atol=1e-13)
    assert SphericalHarmonics(129)._direct is False
