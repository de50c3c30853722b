"""Raster sources as GDAL knows them (subdatasets, /vsizip/, VRTs over them), the `crs:` override, the
nodata checks, and `region: raster` sampling the raster's valid-data area (issue 13, items 1-3)."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import yaml
from rasterio.io import MemoryFile

from geoembed.config import load_config, parse_config
from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io import gdalnames
from geoembed.io.fingerprint import file_fingerprint, source_fingerprint
from geoembed.io.locations import make_locations
from geoembed.io.rasters import raster_files, raster_fingerprint
from geoembed.locations import make_location_table
from geoembed.testing.rasters import from_origin, write_geotiff
from geoembed.views import raster as rv
from geoembed.views.driver import build_view_store
from geoembed.views.raster import RasterSource, extract_chips, validarea

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32633"
RES = 30.0
GRID = from_origin(497_000.0, 5_500_000.0, RES, RES)


def _field(h: int = 60, w: int = 80, bands: int = 2) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([r * 1000 + c + 10_000 * k for k in range(bands)]).astype(np.float32)


def write_netcdf(path: Path, data: np.ndarray, transform=GRID) -> Path:
    """A NetCDF written by GDAL, one variable per band (Band1, Band2 ...), without a CRS."""
    count, h, w = data.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name,
                      transform=transform) as ds:
            ds.write(data)
        with mem.open() as ds:
            path.parent.mkdir(parents=True, exist_ok=True)
            rasterio.shutil.copy(ds, path, driver="netCDF")
    return path


def _locs(n: int = 12):
    """Locations well inside GRID's 80 x 60 pixels (lon 14.958..14.992, lat 49.636..49.653)."""
    rng = np.random.default_rng(0)
    return 14.966 + rng.uniform(0, 0.018, n), 49.641 + rng.uniform(0, 0.007, n)


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- GDAL dataset names
@pytest.mark.parametrize("name, want", [
    ('NETCDF:"data/x.nc":t2m', 'NETCDF:"/abs/data/x.nc":t2m'),
    ("NETCDF:data/x.nc:t2m", "NETCDF:/abs/data/x.nc:t2m"),
    ("/vsizip/data/a.zip/b.tif", "/vsizip//abs/data/a.zip/b.tif"),
    ("/vsizip/{data/a.zip}/b.tif", "/vsizip/{/abs/data/a.zip}/b.tif"),
    ("/vsigzip/data/x.tif.gz", "/vsigzip//abs/data/x.tif.gz"),
    ('NETCDF:"/vsizip/data/z.zip/x.nc":v', 'NETCDF:"/vsizip//abs/data/z.zip/x.nc":v'),
    ("HDF5:data/f.h5://grp/ds", "HDF5:/abs/data/f.h5://grp/ds"),
    ('HDF4_EOS:EOS_GRID:"data/m.hdf":grid:NDVI', 'HDF4_EOS:EOS_GRID:"/abs/data/m.hdf":grid:NDVI'),
    ("GTIFF_DIR:2:data/multi.tif", "GTIFF_DIR:2:/abs/data/multi.tif"),
    ("data/plain.tif", "/abs/data/plain.tif"),
    # left alone: absolute, remote, URLs, connection strings
    ('NETCDF:"/d/x.nc":t2m', 'NETCDF:"/d/x.nc":t2m'),
    ("/vsizip//d/a.zip/b.tif", "/vsizip//d/a.zip/b.tif"),
    ("https://example.org/x.tif", "https://example.org/x.tif"),
    ("s3://bucket/x.tif", "s3://bucket/x.tif"),
    ("/vsicurl/https://example.org/x.tif", "/vsicurl/https://example.org/x.tif"),
    ("/vsis3/bucket/x.tif", "/vsis3/bucket/x.tif"),
    ('NETCDF:"/vsicurl/https://example.org/x.nc":t', 'NETCDF:"/vsicurl/https://example.org/x.nc":t'),
    ("PG:dbname=x host=10.0.0.1", "PG:dbname=x host=10.0.0.1"),
])
def test_gdal_names_get_only_their_file_made_absolute(name, want):
    assert gdalnames.absolute(name, "/abs") == want
    assert gdalnames.absolute(want, "/elsewhere") == want  # absolute names stay as they are


def test_gdal_names_remote_and_local_files(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("sub/b.tif", b"not read here")
    assert gdalnames.local_files(f"/vsizip/{z}/sub/b.tif") == [str(z)]
    assert gdalnames.local_files(f'NETCDF:"/vsizip/{z}/x.nc":t') == [str(z)]
    assert gdalnames.local_files(f'NETCDF:"{tmp_path}/x.nc":t') == [f"{tmp_path}/x.nc"]
    assert gdalnames.template(f"/vsizip/{z}/sub/b.tif") == "/vsizip/{file}/sub/b.tif"
    for remote in ("https://h/x.tif", "/vsicurl/https://h/x.tif", "/vsis3/b/k.tif", "/vsimem/x.tif"):
        assert gdalnames.is_remote(remote) and gdalnames.local_files(remote) == []
    assert not gdalnames.is_remote(f"/vsizip/{z}/sub/b.tif")
    # a file whose name looks like a driver prefix stays a plain path where it exists
    (tmp_path / "ab:c.tif").write_bytes(b"x")
    assert gdalnames.absolute("ab:c.tif", tmp_path) == str(tmp_path / "ab:c.tif")


def test_config_resolves_gdal_names_in_every_raster_key(tmp_path):
    cfg = load_config(_yaml(tmp_path / "c.yaml", {
        "locations": {"region": {"raster": 'NETCDF:"data/x.nc":Band1', "crs": "EPSG:32633"}, "n": 5,
                      "weight": {"raster": "/vsizip/data/w.zip/w.tif"},
                      "coverage": ["/vsizip/data/a.zip/b.tif", "https://example.org/c.tif"]},
        "views": [{"kind": "raster", "name": "nc", "sources": ['NETCDF:"data/x.nc":Band2', "data/plain.tif"],
                   "crs": ["EPSG:32633", None]}],
    }))
    d = tmp_path.resolve() / "data"
    assert cfg.locations.region.raster == f'NETCDF:"{d}/x.nc":Band1'
    assert cfg.locations.weight.raster == f"/vsizip/{d}/w.zip/w.tif"
    assert cfg.locations.coverage == [f"/vsizip/{d}/a.zip/b.tif", "https://example.org/c.tif"]
    assert cfg.views[0].sources == [f'NETCDF:"{d}/x.nc":Band2', f"{d}/plain.tif"]


def test_new_settings_leave_old_dumps_and_fingerprints_unchanged():
    cfg = parse_config({"locations": {"region": {"raster": "/d/x.tif"}, "n": 5, "weight": {"raster": "/d/w.tif"}},
                        "views": [{"kind": "raster", "name": "a", "sources": ["/d/x.tif"]}]})
    assert "crs" not in cfg.views[0].model_dump(mode="json")
    assert set(cfg.locations.region.model_dump()) == {"bbox", "polygon", "raster"}
    assert "crs" not in cfg.locations.weight.model_dump()
    with pytest.raises(ConfigError, match="crs has 1 entries but there are 2 sources"):
        parse_config({"views": [{"kind": "raster", "name": "a", "sources": ["/a", "/b"], "crs": ["EPSG:4326"]}]})
    with pytest.raises(ConfigError, match="region raster only"):
        parse_config({"locations": {"region": {"bbox": [0, 0, 1, 1], "crs": "EPSG:4326"}, "n": 5}})


# ----------------------------------------------------------------------------- NetCDF, CRS override, VRT, zip
def test_netcdf_subdataset_without_crs_and_the_crs_override(tmp_path):
    data = _field()
    nc = write_netcdf(tmp_path / "data" / "x.nc", data)
    ref = write_geotiff(tmp_path / "ref.tif", data[1], crs=UTM, transform=GRID)
    before = file_fingerprint(nc)
    name = f'NETCDF:"{nc}":Band2'
    with pytest.raises(InputError, match=r"has no CRS: give one in the config with `crs:`") as err:
        rv.resolve_sources(RasterViewConfig(name="nc", sources=[name]))
    assert name in str(err.value)
    sources, infos = rv.resolve_sources(RasterViewConfig(name="nc", sources=[name], crs=["EPSG:32633"]))
    assert infos[0]["crs_epsg"] == 32633 and sources[0].crs is not None
    assert infos[0]["band_names"] == ["x:Band2:b1"]
    lon, lat = _locs()
    a, va = extract_chips(sources, lon, lat, chip_size=6, resolution_m=RES)
    b, vb = extract_chips([RasterSource(str(ref))], lon, lat, chip_size=6, resolution_m=RES)
    np.testing.assert_array_equal(a, b)
    assert (va == vb).all() and (va > 0).all()
    assert file_fingerprint(nc) == before  # the user's file is never edited
    # fingerprint: the file behind the name; another variable of the same file is another source
    fp = infos[0]["fingerprint"]
    assert fp == raster_fingerprint(name) != raster_fingerprint(f'NETCDF:"{nc}":Band1')
    write_netcdf(nc, data + 1)
    assert raster_fingerprint(name) != fp
    with pytest.raises(ConfigError, match=r"view nc: crs\[0\].*'EPSG:999999' is not a CRS"):
        rv.resolve_sources(RasterViewConfig(name="nc", sources=[name], crs=["EPSG:999999"]))


def test_crs_override_of_a_file_that_has_one_warns_naming_both(tmp_path, caplog):
    path = write_geotiff(tmp_path / "utm.tif", _field()[0], crs=UTM, transform=GRID)
    with caplog.at_level(logging.WARNING):
        _, infos = rv.resolve_sources(RasterViewConfig(name="o", sources=[str(path)], crs=["EPSG:32632"]))
    assert infos[0]["crs_epsg"] == 32632
    assert any("EPSG:32633" in r.message and "EPSG:32632" in r.message for r in caplog.records)


def test_container_of_subdatasets_and_a_wrong_variable_are_named(tmp_path):
    nc = write_netcdf(tmp_path / "x.nc", _field())
    with pytest.raises(InputError, match=r"holds no bands of its own but 2 subdatasets.*Band1") as err:
        rv.resolve_sources(RasterViewConfig(name="c", sources=[str(nc)], crs=["EPSG:32633"]))
    assert str(nc) in str(err.value)
    with pytest.raises(InputError, match=r"cannot read raster NETCDF:.*Nope.*holds the subdatasets .*Band2"):
        rv.resolve_sources(RasterViewConfig(name="c", sources=[f'NETCDF:"{nc}":Nope']))
    with pytest.raises(InputError, match=r"raster NETCDF:.*missing\.nc.*does not exist"):
        rv.resolve_sources(RasterViewConfig(name="c", sources=[f'NETCDF:"{tmp_path}/missing.nc":t']))


def test_vrt_over_subdatasets_reads_and_fingerprints_the_files_behind(tmp_path):
    data = _field()
    nc = write_netcdf(tmp_path / "sub" / "x.nc", data)
    vrt = tmp_path / "v.vrt"
    h, w = data.shape[1:]
    vrt.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{UTM}</SRS>'
        f"<GeoTransform>{', '.join(map(repr, GRID.to_gdal()))}</GeoTransform>"
        '<VRTRasterBand dataType="Float32" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">NETCDF:"sub/x.nc":Band2</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>")
    assert raster_files(str(vrt)) == [str(vrt), str(nc)]
    lon, lat = _locs()
    sources, infos = rv.resolve_sources(RasterViewConfig(name="v", sources=[str(vrt)]))
    a, _ = extract_chips(sources, lon, lat, chip_size=6, resolution_m=RES)
    ref = write_geotiff(tmp_path / "ref.tif", data[1], crs=UTM, transform=GRID)
    b, _ = extract_chips([RasterSource(str(ref))], lon, lat, chip_size=6, resolution_m=RES)
    np.testing.assert_array_equal(a, b)
    fp = infos[0]["fingerprint"]
    write_netcdf(nc, data * 2)  # the VRT's text is the same; the file behind it changed
    assert raster_fingerprint(str(vrt)) != fp


def test_vsizip_member_relative_to_the_config(tmp_path):
    data = _field()
    tif = write_geotiff(tmp_path / "r.tif", data, crs=UTM, transform=GRID)
    (tmp_path / "data").mkdir()
    z = tmp_path / "data" / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tif, "inner/r.tif")
    cfg = load_config(_yaml(tmp_path / "c.yaml", {
        "views": [{"kind": "raster", "name": "z", "sources": ["/vsizip/data/a.zip/inner/r.tif"]}]}))
    src = cfg.views[0].sources[0]
    assert src == f"/vsizip/{z.resolve()}/inner/r.tif"
    sources, infos = rv.resolve_sources(cfg.views[0])
    lon, lat = _locs()
    a, _ = extract_chips(sources, lon, lat, chip_size=6, resolution_m=RES)
    b, _ = extract_chips([RasterSource(str(tif))], lon, lat, chip_size=6, resolution_m=RES)
    np.testing.assert_array_equal(a, b)
    assert infos[0]["fingerprint"] == source_fingerprint(src) != f"remote:{src}"
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("other.txt", "the archive changed")
    assert raster_fingerprint(src) != infos[0]["fingerprint"]
    with pytest.raises(InputError, match="does not exist"):
        rv.resolve_sources(RasterViewConfig(name="z", sources=[f"/vsizip/{tmp_path}/none.zip/r.tif"]))


# ----------------------------------------------------------------------------- nodata checks
@pytest.mark.parametrize("dtype, value", [("uint8", -1.0), ("uint8", 300.0), ("uint8", 1.5), ("uint16", -9999.0),
                                          ("uint16", math.nan), ("int16", 40000.0), ("float32", 1e39)])
def test_nodata_override_the_band_cannot_hold_is_an_error(tmp_path, dtype, value):
    path = write_geotiff(tmp_path / f"{dtype}.tif", np.ones((2, 20, 20), dtype=dtype), crs=UTM, transform=GRID)
    cfg = RasterViewConfig(name="nd", sources=[str(path)], nodata=[value])
    with pytest.raises(ConfigError, match=rf"view nd: nodata\[0\]: nodata .* raster {re.escape(str(path))} band 1 \({dtype}\)"):
        rv.resolve_sources(cfg)


@pytest.mark.parametrize("dtype, value", [("uint8", 255.0), ("uint16", 0.0), ("int16", -9999.0),
                                          ("float32", math.nan), ("float32", -3.4028235e38)])
def test_nodata_override_the_band_can_hold_is_accepted(tmp_path, dtype, value):
    path = write_geotiff(tmp_path / f"{dtype}.tif", np.ones((1, 20, 20), dtype=dtype), crs=UTM, transform=GRID)
    _, infos = rv.resolve_sources(RasterViewConfig(name="nd", sources=[str(path)], nodata=[value]))
    assert infos[0]["nodata_source"] == "config"


def test_override_differing_from_the_declared_nodata_warns_naming_both(tmp_path, caplog):
    path = write_geotiff(tmp_path / "decl.tif", np.ones((1, 20, 20), dtype="int16"), crs=UTM, transform=GRID,
                         nodata=-32768)
    with caplog.at_level(logging.WARNING):
        rv.resolve_sources(RasterViewConfig(name="nd", sources=[str(path)], nodata=[-9999]))
    msgs = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and "-32768" in m and "-9999" in m for m in msgs), msgs


def _framed(path: Path, dtype: str, fill: float, border: int = 10, size: int = 60, declare: bool = False,
            crs: str = UTM, transform=GRID) -> Path:
    """A raster whose outer ``border`` pixels are ``fill`` and whose inside is 1..9."""
    data = np.full((1, size, size), fill, dtype=dtype)
    rng = np.random.default_rng(1)
    data[0, border:-border, border:-border] = rng.integers(1, 10, (size - 2 * border,) * 2)
    return write_geotiff(path, data, crs=crs, transform=transform, nodata=fill if declare else None)


@pytest.mark.parametrize("dtype, fill", [("int16", -9999), ("int16", -32768), ("float32", -3.4028234663852886e38),
                                         ("uint8", 0), ("uint16", 65535)])
def test_undeclared_fill_warns_with_value_and_share(tmp_path, caplog, dtype, fill):
    path = _framed(tmp_path / "f.tif", dtype, fill)
    with caplog.at_level(logging.WARNING):
        rv.resolve_sources(RasterViewConfig(name="fill", sources=[str(path)]))
    share = 1 - (40 * 40) / (60 * 60)  # 56 %
    msgs = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and f"{fill:g}" in m and f"{share:.0%}" in m and "nodata:" in m for m in msgs), msgs


def test_no_fill_warning_for_ordinary_data(tmp_path, caplog):
    """Zeros inside the data (not lining the edges), a declared nodata, the Olinda kit: no warning."""
    data = np.ones((1, 60, 60), dtype="uint8")
    data[0, 20:40, 20:40] = 0  # 11 % zeros, none on the edge
    inner = write_geotiff(tmp_path / "zeros.tif", data, crs=UTM, transform=GRID)
    declared = _framed(tmp_path / "declared.tif", "int16", -9999, declare=True)
    olinda = [str(ROOT / "data" / "olinda" / "L7_ETMs.tif"), str(ROOT / "data" / "olinda" / "olinda_dem_utm25s.tif")]
    with caplog.at_level(logging.WARNING):
        rv.resolve_sources(RasterViewConfig(name="ok", sources=[str(inner), str(declared), *olinda]))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- region: raster = valid area
GEO = from_origin(10.0, 50.0, 0.001, 0.001)


def _value_at(path: Path, lon, lat) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.array([v[0] for v in ds.sample(zip(lon, lat, strict=True))], dtype=np.float64)


@pytest.mark.parametrize("how", ["nodata", "mask", "nan"])
def test_region_raster_framed_by_no_data_samples_only_data(tmp_path, how):
    size, border = 200, 60  # 64 % of the rectangle is no data
    path = tmp_path / f"framed_{how}.tif"
    if how == "nodata":
        _framed(path, "int16", -9999, border=border, size=size, declare=True, crs="EPSG:4326", transform=GEO)
    else:
        data = np.full((1, size, size), 5, dtype="float32" if how == "nan" else "uint8")
        if how == "nan":
            data[0, :border], data[0, -border:], data[0, :, :border], data[0, :, -border:] = (np.nan,) * 4
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
                path, "w", driver="GTiff", width=size, height=size, count=1, dtype=data.dtype.name,
                crs="EPSG:4326", transform=GEO) as ds:
            ds.write(data)
            if how == "mask":
                mask = np.zeros((size, size), dtype=np.uint8)
                mask[border:-border, border:-border] = 255
                ds.write_mask(mask)
    cfg = parse_config({"locations": {"region": {"raster": str(path)}, "n": 1500}}).locations
    g, meta = make_location_table(cfg, [], seed=0)
    assert len(g) == 1500
    lon, lat = g["lon"].to_numpy(), g["lat"].to_numpy()
    col, row = (lon - 10.0) / 0.001, (50.0 - lat) / 0.001
    assert (col >= border).all() and (col < size - border).all() and (row >= border).all() and \
        (row < size - border).all()
    # spread over the whole data area, not a corner of it
    assert np.ptp(col) > 0.9 * (size - 2 * border) and np.ptp(row) > 0.9 * (size - 2 * border)
    g2, _ = make_location_table(cfg, [], seed=0)
    np.testing.assert_array_equal(g["lon"], g2["lon"])
    # chips centred there are valid (nearest 1 x 1 chip: the pixel under the location)
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=1, resolution_m=50.0,
                              resampling="nearest")
    assert (vf == 1).all() and np.isfinite(chips).all()


def test_valid_area_of_a_large_raster_checks_pixels_past_the_coarse_grid(tmp_path, monkeypatch):
    """Above MAX_CELLS the coarse grid only rules out far points; each kept point is checked on its pixel:
    a diagonal data edge (no cell boundary) and a one-pixel hole are still respected."""
    size = 240
    r, c = np.mgrid[0:size, 0:size]
    data = np.where(r > c, 7, -9999).astype("int16")[None]
    data[0, 150, 40] = -9999
    path = write_geotiff(tmp_path / "diag.tif", data, crs="EPSG:4326", transform=GEO, nodata=-9999)
    monkeypatch.setattr(validarea, "MAX_CELLS", 400)  # 12 x 12 pixels per cell
    area = validarea.raster_area(str(path))
    assert not area._exact and 0.4 < area.fraction < 0.6
    rng = np.random.default_rng(0)
    lon = 10.0 + rng.uniform(0, size * 0.001, 20000)
    lat = 50.0 - rng.uniform(0, size * 0.001, 20000)
    lon = np.append(lon, 10.0 + 40.5 * 0.001)
    lat = np.append(lat, 50.0 - 150.5 * 0.001)
    got = area.contains(lon, lat)
    want = _value_at(path, lon, lat) != -9999
    np.testing.assert_array_equal(got, want)
    assert not got[-1]


def test_coverage_keeps_locations_on_data_and_counts_the_rest(tmp_path):
    path = _framed(tmp_path / "cov.tif", "int16", -9999, border=50, size=200, declare=True, crs="EPSG:4326",
                   transform=GEO)
    cfg = parse_config({"locations": {"region": {"bbox": [10.0, 49.8, 10.2, 50.0]}, "n": 800}}).locations
    area = validarea.raster_area(str(path))
    g, meta = make_location_table(cfg, [area], seed=0)
    assert len(g) == 800 and (_value_at(path, g["lon"], g["lat"]) != -9999).all()
    s = meta["sampling"]
    assert s["excluded_no_coverage"] > 800 and s["drawn"] == s["kept"] + s["excluded_no_coverage"]


def test_region_raster_with_a_weight_raster_keeps_to_data(tmp_path):
    path = _framed(tmp_path / "w.tif", "int16", -9999, border=50, size=200, declare=True, crs="EPSG:4326",
                   transform=GEO)
    dens = write_geotiff(tmp_path / "dens.tif", np.ones((1, 200, 200), np.float32), crs="EPSG:4326", transform=GEO)
    cfg = parse_config({"locations": {"region": {"raster": str(path)}, "n": 500,
                                      "weight": {"raster": str(dens)}}}).locations
    g, _ = make_location_table(cfg, [], seed=0)
    assert len(g) == 500 and (_value_at(path, g["lon"], g["lat"]) != -9999).all()


def test_region_raster_without_any_data_and_with_a_region_nodata(tmp_path):
    empty = write_geotiff(tmp_path / "empty.tif", np.full((1, 30, 30), -9999, np.int16), crs="EPSG:4326",
                          transform=GEO, nodata=-9999)
    cfg = parse_config({"locations": {"region": {"raster": str(empty)}, "n": 10}}).locations
    with pytest.raises(InputError, match=r"locations.region.raster: raster .*empty.tif has no pixel with data"):
        make_location_table(cfg, [], seed=0)
    undeclared = _framed(tmp_path / "undecl.tif", "int16", -9999, border=10, size=40, crs="EPSG:4326",
                         transform=GEO)
    cfg = parse_config({"locations": {"region": {"raster": str(undeclared), "nodata": -9999}, "n": 300}}).locations
    g, _ = make_location_table(cfg, [], seed=0)
    assert (_value_at(undeclared, g["lon"], g["lat"]) != -9999).all()
    cfg = parse_config({"locations": {"region": {"raster": str(undeclared), "nodata": 1e6}, "n": 3}}).locations
    with pytest.raises(ConfigError, match=r"locations.region.raster: nodata 1e\+06 cannot occur .* band 1 \(int16\)"):
        make_location_table(cfg, [], seed=0)


def test_locations_from_before_the_valid_area_rule_are_kept_only_when_on_data(tmp_path):
    """A locations file made by an earlier geoembed (its fingerprint, no ``valid_area``) is up to date
    while every location lies on data; one with locations on no data needs --overwrite."""
    from geoembed.build import _locations_fingerprints, build_locations, coverage_sources, raster_options
    from geoembed.io.locations import read_locations, read_locations_meta, write_locations

    path = _framed(tmp_path / "r.tif", "int16", -9999, border=50, size=200, declare=True, crs="EPSG:4326",
                   transform=GEO)
    cfg = parse_config({"workdir": str(tmp_path / "run"), "locations": {"region": {"raster": str(path)}, "n": 200},
                        "views": [{"kind": "raster", "name": "r", "sources": [str(path)]}]})
    loc_path, meta = build_locations(cfg)
    assert meta["valid_area"] is True
    _, legacy = _locations_fingerprints(cfg, coverage_sources(cfg), raster_options(cfg))
    old = {k: v for k, v in meta.items() if k != "valid_area"} | {"build_fingerprint": legacy}
    gdf = read_locations(loc_path)
    write_locations(gdf, loc_path, old)  # as an earlier geoembed wrote it: all on data
    assert build_locations(cfg)[1]["build_fingerprint"] == legacy
    on_frame = make_locations(np.arange(3), np.array([10.01, 10.1, 10.19]), np.array([49.99, 49.9, 49.81]),
                              np.zeros(3, dtype=np.int64))
    write_locations(on_frame, loc_path, old)
    with pytest.raises(InputError, match="sampled by an earlier geoembed, some of its locations on pixels without"):
        build_locations(cfg)
    _, meta = build_locations(cfg, overwrite=True)
    assert meta["valid_area"] and read_locations_meta(loc_path)["sampling"]["kept"] == 200


# ----------------------------------------------------------------------------- the build, through the CLI
def _cli(cfg: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "geoembed.cli", "build", "-c", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_cli_build_netcdf_region_and_view_with_crs_and_one_line_errors(tmp_path):
    data = np.full((1, 60, 80), -9999, dtype=np.float32)
    data[0, 10:50, 10:70] = _field()[0, 10:50, 10:70]
    nc = write_netcdf(tmp_path / "data" / "t.nc", np.concatenate([data, data + 1]))
    before = file_fingerprint(nc)
    view = {"kind": "raster", "name": "t", "sources": ['NETCDF:"data/t.nc":Band1'], "chip_size": 1,
            "resolution_m": 30, "crs": ["EPSG:32633"], "nodata": [-9999]}
    base = {"workdir": str(tmp_path / "run"), "dask": {"chunk_size": 64}, "views": [view],
            "locations": {"region": {"raster": 'NETCDF:"data/t.nc":Band1'}, "n": 150}}
    res = _cli(_yaml(tmp_path / "ok.yaml", base))
    assert res.returncode == 0, res.stderr
    assert "locations: 150 kept" in res.stdout and "Traceback" not in res.stderr
    assert "150 of 150 rows valid" in res.stdout  # every location on data, its chip too
    assert file_fingerprint(nc) == before
    # bad inputs: one line on stderr naming the problem, no traceback, nothing that looks complete
    cases = {
        "nocrs": ({**view, "crs": None}, "has no CRS: give one in the config with `crs:`"),
        "too_large": ({**view, "nodata": [1e39]}, r"view t: source 0: nodata 1e\+39 cannot occur in raster NETCDF:"),
    }
    for name, (v, msg) in cases.items():
        cfg = {**base, "workdir": str(tmp_path / name), "views": [v],
               "locations": {"region": {"bbox": [14.966, 49.641, 14.984, 49.648]}, "n": 20}}
        res = _cli(_yaml(tmp_path / f"{name}.yaml", cfg))
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("geoembed build: error:")]
        assert len(errors) == 1 and re.search(msg, errors[0]), res.stderr
        assert not (tmp_path / name / "views" / "t" / "meta.json").exists()


def test_cli_build_shows_the_undeclared_fill_warning(tmp_path):
    path = _framed(tmp_path / "fill.tif", "int16", -9999, border=15, size=60)
    cfg = {"workdir": str(tmp_path / "run"), "dask": {"chunk_size": 64},
           "locations": {"region": {"bbox": [14.96, 49.638, 14.98, 49.65]}, "n": 40},
           "views": [{"kind": "raster", "name": "f", "sources": [str(path)], "chip_size": 2, "resolution_m": 30}]}
    res = _cli(_yaml(tmp_path / "fill.yaml", cfg))
    assert res.returncode == 0, res.stderr
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("WARNING") and "-9999" in ln]
    assert len(warn) == 1 and "75%" in warn[0] and "nodata:" in warn[0], res.stderr


def test_build_view_store_over_a_vsizip_source(tmp_path):
    tif = write_geotiff(tmp_path / "r.tif", _field(), crs=UTM, transform=GRID)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tif, "r.tif")
    lon, lat = _locs(40)
    locs = make_locations(np.arange(40), lon, lat, np.zeros(40, dtype=np.int64))
    dcfg = DaskConfig(chunk_size=16)
    a = build_view_store(RasterViewConfig(name="z", sources=[f"/vsizip/{z}/r.tif"], chip_size=4), locs,
                         tmp_path / "z", dask_cfg=dcfg)
    b = build_view_store(RasterViewConfig(name="p", sources=[str(tif)], chip_size=4), locs, tmp_path / "p",
                         dask_cfg=dcfg)
    np.testing.assert_array_equal(a.read("chips"), b.read("chips"))
