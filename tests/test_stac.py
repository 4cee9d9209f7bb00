"""Sentinel series given as STAC items (Earth Search and Planetary Computer naming, on small
generated COGs): the bands matched by name, dates from the items, clouds from SCL, the L2A
offset from each item's metadata, items of one day mosaicked; read and embedded exactly as
the same data given as a folder of GeoTIFFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from skysense_fast import models
from skysense_fast.cli import main
from skysense_fast.data import find_series, read_on_grid
from skysense_fast.infer.embed import embed_scene

CRS = "EPSG:32633"
S2_ORIGIN = (499980.0, 5000020.0)      # 10 m pixels aligned with the scene's fusion grid
SIZE = (12, 12)
ES_KEYS = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"]
ES_COMMON = ["blue", "green", "red", "rededge", "rededge", "rededge", "nir", "nir08", "swir16", "swir22"]
PC_KEYS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def _scene(path):
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=256, width=256, count=3, dtype="uint8", crs=CRS,
                       transform=from_origin(500000, 5000000, 0.3125, 0.3125)) as d:
        d.write((rng.random((3, 256, 256)) * 255).astype(np.uint8))


def _cog(path, data, dtype, nodata):
    with rasterio.open(path, "w", driver="COG", height=data.shape[0], width=data.shape[1], count=1, dtype=dtype,
                       crs=CRS, transform=from_origin(*S2_ORIGIN, 10, 10), nodata=nodata) as d:
        d.write(data.astype(dtype), 1)


def _truth(seed):
    """L2A reflectance DNs on the model's (pre-04.00) scale, and an SCL map with a cloud."""
    rng = np.random.default_rng(seed)
    dn = np.round(rng.random((10, *SIZE)) * 3000 + 100).astype(np.float32)   # integers, as L2A files hold
    scl = np.full(SIZE, 4, np.uint8)
    scl[2:5, 6:9] = 9                         # cloud, high probability
    return dn, scl


def _item(folder, name, date, dn, scl, *, style="es", offset_applied=None, baseline="04.00", cols=None,
          relative=False, props=None, served=None):
    """One S2 L2A item: a COG per band (+ SCL) holding ``dn`` as the catalogue would serve it."""
    keep = np.ones(SIZE, bool)
    if cols is not None:                       # the item's footprint: these columns only
        keep[:] = False
        keep[:, cols[0]:cols[1]] = True
    served_offset = served if served is not None else 0 if (offset_applied or float(baseline or 0) < 4) else 1000
    assets = {}
    keys = ES_KEYS if style == "es" else PC_KEYS
    for b, key in enumerate(keys):
        file = folder / f"{name}_{key}.tif"
        _cog(file, np.where(keep, dn[b] + served_offset, 0), "uint16", 0)
        eo = ({"name": key, "common_name": ES_COMMON[b]} if style == "es" else {"name": key})
        assets[key] = {"href": file.name if relative else str(file), "type": "image/tiff; application=geotiff",
                       "eo:bands": [eo], "raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}],
                       "roles": ["data"]}
    scl_key = "scl" if style == "es" else "SCL"
    _cog(folder / f"{name}_scl.tif", np.where(keep, scl, 0), "uint8", 0)
    assets[scl_key] = {"href": str(folder / f"{name}_scl.tif"), "roles": ["data"]}
    assets["visual"] = {"href": str(folder / f"{name}_blue.tif"), "eo:bands": [{"name": "red"}, {"name": "green"},
                                                                            {"name": "blue"}]}
    properties = {"datetime": f"{date}T10:30:00Z", "eo:cloud_cover": 12.0}
    if baseline is not None:
        properties["s2:processing_baseline"] = baseline
    if offset_applied is not None:
        properties["earthsearch:boa_offset_applied"] = offset_applied
    properties |= props or {}
    left, top = S2_ORIGIN
    ring = [[left, top], [left + 120, top], [left + 120, top - 120], [left, top - 120], [left, top]]
    return {"type": "Feature", "stac_version": "1.0.0", "id": name, "collection": "sentinel-2-l2a",
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [left, top - 120, left + 120, top],
            "properties": properties, "assets": assets, "links": [],
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]}


def _collection(path, items):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return str(path)


def _folder(folder, frames):
    """The same series as this package's folder of GeoTIFFs: 10 bands + a cloud-mask band."""
    folder.mkdir()
    for date, dn, scl in frames:
        mask = np.isin(scl, (0, 1, 3, 8, 9, 10)).astype(np.float32)
        with rasterio.open(folder / f"S2_{date.replace('-', '')}.tif", "w", driver="GTiff", height=SIZE[0],
                           width=SIZE[1], count=11, dtype="float32", crs=CRS,
                           transform=from_origin(*S2_ORIGIN, 10, 10)) as d:
            d.write(np.concatenate([dn, mask[None]]))
    return folder


GRID = (CRS, from_origin(500000, 5000000, 10, 10), (8, 8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create("skysense-tiny").eval()


def test_earth_search_and_planetary_computer_items_read_like_a_folder(tmp_path, model):
    a, b = _truth(1), _truth(2)
    items = [
        # Earth Search: offset kept in the files (flag false, baseline 04.00); one day in two items
        _item(tmp_path, "es_w", "2022-03-01", *a, offset_applied=False, cols=(0, 8)),
        _item(tmp_path, "es_e", "2022-03-01", *a, offset_applied=False, cols=(6, 12)),
        # Planetary Computer: B02 ... keys, baseline 05.00 and no flag: the files keep +1000
        _item(tmp_path, "pc", "2022-06-01", *b, style="pc", baseline="05.00"),
    ]
    stac = _collection(tmp_path / "items.json", items)
    folder = _folder(tmp_path / "s2", [("2022-03-01", *a), ("2022-06-01", *b)])
    acq = find_series(stac, band_count=10)
    assert [str(x.date) for x in acq] == ["2022-03-01", "2022-06-01"] and len(acq[0].parts) == 2
    assert [p.offset for x in acq for p in x.parts] == [-1000.0, -1000.0, -1000.0]
    x_stac, ok_stac = read_on_grid(acq, 10, *GRID, "s2")
    x_dir, ok_dir = read_on_grid(find_series(folder, band_count=10), 10, *GRID, "s2")
    np.testing.assert_array_equal(ok_stac, ok_dir)
    np.testing.assert_allclose(x_stac, x_dir, rtol=0, atol=1e-5)
    assert (x_stac[0, :, 0:3, 4:7] == 0).all()      # the cloud (SCL 9): no data there
    _scene(tmp_path / "scene.tif")
    embed_scene(model, tmp_path / "scene.tif", tmp_path / "f_stac.tif", tile=256, overlap=0, s2=stac)
    embed_scene(model, tmp_path / "scene.tif", tmp_path / "f_dir.tif", tile=256, overlap=0, s2=folder)
    with rasterio.open(tmp_path / "f_stac.tif") as f, rasterio.open(tmp_path / "f_dir.tif") as g:
        np.testing.assert_allclose(f.read(), g.read(), rtol=1e-5, atol=1e-5)
    # the CLI takes the same collection as --s2
    assert main(["embed", str(tmp_path / "scene.tif"), "-o", str(tmp_path / "c.tif"), "--tile", "256",
                 "--overlap", "0", "--s2", stac]) == 0


@pytest.mark.parametrize("applied, baseline, offset", [
    (True, "05.00", 0.0),          # Earth Search removed it
    (True, None, 0.0),             # ... its word decides, whatever raster:bands publishes (-0.1)
    (False, "03.01", 0.0),         # before 04.00 there is none
    (None, "04.00", -1000.0),      # ESA's files as they are (Planetary Computer)
    (None, None, -1000.0),         # only the published raster:bands offset, -0.1 at scale 1e-4
])
def test_the_offset_comes_from_the_item(tmp_path, applied, baseline, offset):
    dn, scl = _truth(3)
    served = 0 if offset == 0 else 1000     # what the catalogue's files hold on top of the truth
    item = _item(tmp_path, "x", "2023-05-01", dn, scl, offset_applied=applied, baseline=baseline, served=served)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    (acq,) = find_series([str(path)], band_count=10)
    assert acq.parts[0].offset == offset
    x, _ = read_on_grid([acq], 10, *GRID, "s2")
    ref, _ = read_on_grid(find_series(_folder(tmp_path / "ref", [("2023-05-01", dn, scl)]), band_count=10),
                          10, *GRID, "s2")
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)


def test_relative_hrefs_and_sentinel_1_rtc(tmp_path):
    dn, scl = _truth(4)
    item = _item(tmp_path, "rel", "2022-07-01", dn, scl, offset_applied=True, baseline="05.00", relative=True)
    (tmp_path / "cat").mkdir()
    for a in item["assets"].values():       # the collection file sits elsewhere: hrefs relative to it
        if not a["href"].startswith("/"):
            a["href"] = "../" + a["href"]
    (acq,) = find_series(_collection(tmp_path / "cat" / "c.json", [item]), band_count=10)
    assert acq.parts[0].bands[0] == str(tmp_path / "rel_blue.tif")
    # Sentinel-1 RTC (Planetary Computer): vv / vh linear power, float32, nodata -32768
    rng = np.random.default_rng(5)
    power = (rng.random((2, *SIZE)) * 0.2 + 0.01).astype(np.float32)
    assets = {}
    for b, key in enumerate(("vv", "vh")):
        _cog(tmp_path / f"s1_{key}.tif", power[b], "float32", -32768)
        assets[key] = {"href": str(tmp_path / f"s1_{key}.tif"), "raster:bands": [{"nodata": -32768}]}
    s1 = {"type": "Feature", "stac_version": "1.0.0", "id": "s1", "collection": "sentinel-1-rtc", "geometry": None,
          "properties": {"datetime": "2022-07-03T05:00:00Z", "sar:polarizations": ["VV", "VH"]},
          "assets": assets, "links": []}
    (a1,) = find_series(_collection(tmp_path / "s1.json", [s1]), band_count=2)
    x, ok = read_on_grid([a1], 2, *GRID, "s1")
    (tmp_path / "s1dir").mkdir()
    with rasterio.open(tmp_path / "s1dir" / "S1_20220703.tif", "w", driver="GTiff", height=SIZE[0], width=SIZE[1],
                       count=2, dtype="float32", crs=CRS, transform=from_origin(*S2_ORIGIN, 10, 10)) as d:
        d.write(power)
    ref, ok_ref = read_on_grid(find_series(tmp_path / "s1dir", band_count=2), 2, *GRID, "s1")
    assert ok.all() and ok_ref.all()
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)


def test_bad_stac_is_refused_by_name(tmp_path):
    dn, scl = _truth(6)
    item = _item(tmp_path, "bad", "2022-01-01", dn, scl, baseline=None)
    for key in ES_KEYS:
        item["assets"][key]["raster:bands"] = [{"nodata": 0}]       # no offset published either
    with pytest.raises(ValueError, match="cannot tell whether its Sentinel-2 values carry the \\+1000 offset"):
        find_series(_collection(tmp_path / "a.json", [item]), band_count=10)
    item = _item(tmp_path, "gap", "2022-01-01", dn, scl)
    del item["assets"]["nir08"]
    with pytest.raises(ValueError, match="no asset for Sentinel-2 band\\(s\\) B8A"):
        find_series(_collection(tmp_path / "b.json", [item]), band_count=10)
    grd = {"type": "Feature", "stac_version": "1.0.0", "id": "g", "collection": "sentinel-1-grd", "geometry": None,
           "properties": {"datetime": "2022-07-03T05:00:00Z"}, "assets": {}, "links": []}
    with pytest.raises(ValueError, match="uncalibrated GRD"):
        find_series(_collection(tmp_path / "g.json", [grd]), band_count=2)
    ok = _collection(tmp_path / "ok.json", [_item(tmp_path, "ok", "2022-01-01", dn, scl)])
    with pytest.raises(ValueError, match="carry their dates"):
        find_series(ok, dates=["2022-01-01"], band_count=10)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        find_series(str(tmp_path / "junk.json"), band_count=10)
    (tmp_path / "cat.json").write_text(json.dumps({"type": "Catalog", "id": "c"}))
    with pytest.raises(ValueError, match="neither a STAC ItemCollection nor a STAC Item"):
        find_series(str(tmp_path / "cat.json"), band_count=10)
    for flag, message in (("false", "must be true or false"), (False, "no s2:processing_baseline")):
        item = _item(tmp_path, "f", "2022-01-01", dn, scl, baseline=None)
        item["properties"]["earthsearch:boa_offset_applied"] = flag
        with pytest.raises(ValueError, match=message):
            find_series(_collection(tmp_path / "f.json", [item]), band_count=10)
    broken = _item(tmp_path, "e", "2022-01-01", dn, scl)
    broken["assets"] = []
    with pytest.raises(ValueError, match="not a valid STAC item"):
        find_series(_collection(tmp_path / "e.json", [broken]), band_count=10)
