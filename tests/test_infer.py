"""Tiled GeoTIFF inference and the command line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from skysense_fast import models  # noqa: E402
from skysense_fast.cli import main  # noqa: E402
from skysense_fast.data.geotiff import normalise_hr, scene_latlon  # noqa: E402
from skysense_fast.infer import embed_scene  # noqa: E402


def write_scene(path, H, W, nodata=None, seed=0):
    img = (np.random.default_rng(seed).random((3, H, W)) * 255).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 0.5, 0.5), nodata=nodata) as d:
        d.write(img)
    return img


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create("skysense-tiny").eval()


def test_one_tile_equals_whole_image_inference(model, tmp_path):
    img = write_scene(tmp_path / "s.tif", 200, 300)
    embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=320, overlap=0)
    with rasterio.open(tmp_path / "s.tif") as d:
        ll = torch.tensor([scene_latlon(d)])
    with torch.no_grad():
        ref = model(hr=torch.from_numpy(normalise_hr(img))[None], latlon=ll)["fused"][0].numpy()
    with rasterio.open(tmp_path / "f.tif") as f:
        np.testing.assert_allclose(f.read(), ref, rtol=1e-5, atol=1e-5)


def test_tiled_output_georeferencing_and_blending(model, tmp_path):
    img = write_scene(tmp_path / "s.tif", 400, 700)
    info = embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=256, overlap=64, batch_size=3)
    assert info["tiles"] == 8 and info["shape"] == (64, 13, 22) and info["rows_written"] == 13
    with rasterio.open(tmp_path / "s.tif") as s, rasterio.open(tmp_path / "f.tif") as f:
        a = f.read()
        assert f.crs == s.crs and f.transform == s.transform @ rasterio.Affine.scale(32, 32)
        assert f.descriptions[0] == "skysense_fused_0" and f.profile["compress"] == "deflate" and f.profile["tiled"]
    assert np.isfinite(a).all()
    # where only one tile reaches (tile (0, 0) minus the overlaps: 6 x 6 feature pixels) the
    # output is exactly that tile's features: the blend weights are normalised
    with rasterio.open(tmp_path / "s.tif") as d:
        ll = torch.tensor([scene_latlon(d)])
    with torch.no_grad():
        tile = model(hr=torch.from_numpy(normalise_hr(img[:, :256, :256]))[None], latlon=ll)["fused"][0].numpy()
    np.testing.assert_allclose(a[:, :6, :6], tile[:, :6, :6], rtol=1e-5, atol=1e-5)
    # and batching does not change anything
    embed_scene(model, tmp_path / "s.tif", tmp_path / "g.tif", tile=256, overlap=64, batch_size=1)
    with rasterio.open(tmp_path / "g.tif") as g:
        np.testing.assert_allclose(g.read(), a, rtol=1e-4, atol=1e-4)


def test_nodata_input_gives_nodata_output(model, tmp_path):
    img = write_scene(tmp_path / "s.tif", 256, 320, nodata=0)
    img = np.maximum(img, 1)
    img[:, :, :128] = 0                           # feature columns 0-3: no data at all
    img[:, :10, 128:160] = 0                      # cell (0, 4): 10 of 32 rows missing -> still valid
    with rasterio.open(tmp_path / "s.tif", "r+") as d:
        d.write(img)
    for kw in ({}, {"resume": True, "chunk_rows": 3}):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=32, **kw)
        with rasterio.open(tmp_path / "f.tif") as f:
            a = f.read()
            assert np.isnan(f.nodata)
        assert np.isnan(a[:, :, :4]).all() and np.isfinite(a[:, :, 4:]).all()
    write_scene(tmp_path / "full.tif", 64, 64)
    embed_scene(model, tmp_path / "full.tif", tmp_path / "g.tif", tile=64, overlap=0)
    with rasterio.open(tmp_path / "g.tif") as g:
        assert g.nodata is None                   # no nodata declared in, none out


@pytest.mark.parametrize("declared", [float("nan"), None], ids=["nodata=nan", "undeclared"])
def test_nan_pixels_in_a_float_scene_are_nodata(model, tmp_path, declared):
    """NaN, the usual nodata of float GeoTIFFs, was never detected (`a == nodata` never
    matches NaN): one NaN pixel made 16 of 64 feature pixels NaN, a 30 x 30 block the whole
    output, with exit 0. Now a NaN (declared or not) is a hole like any nodata pixel."""
    img = write_scene(tmp_path / "u8.tif", 256, 256).astype(np.float32)
    img[:, 100, 77] = np.nan                    # one pixel: its cell stays valid
    img[:, :64, :64] = np.nan                   # feature cells (0-1, 0-1): no data at all
    with rasterio.open(tmp_path / "u8.tif") as d:
        profile = dict(d.profile, dtype="float32", nodata=declared)
    with rasterio.open(tmp_path / "s.tif", "w", **profile) as d:
        d.write(img)
    embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=32, hr_scale="max=255")
    with rasterio.open(tmp_path / "f.tif") as f:
        a = f.read()
        assert np.isnan(f.nodata)
    assert np.isnan(a[:, :2, :2]).all()
    rest = np.ones(a.shape[1:], dtype=bool)
    rest[:2, :2] = False
    assert np.isfinite(a[:, rest]).all()


def test_rasters_that_are_not_8_bit_need_a_stated_scale(model, tmp_path, capsys):
    """uint16 / int8 / float rasters were normalised as if they were 0-255, without a word."""
    img = write_scene(tmp_path / "u8.tif", 64, 64)
    with rasterio.open(tmp_path / "u8.tif") as d:
        profile = dict(d.profile, dtype="uint16")
    with rasterio.open(tmp_path / "u16.tif", "w", **profile) as d:
        d.write(img.astype(np.uint16) * 40)             # 0..10200, reflectance-like
    with pytest.raises(ValueError, match="holds uint16 values, not 8-bit RGB.*--hr-scale max=VALUE"):
        embed_scene(model, tmp_path / "u16.tif", tmp_path / "f.tif", tile=64, overlap=0)
    assert main(["embed", str(tmp_path / "u16.tif"), "-o", str(tmp_path / "f.tif"), "--tile", "64",
                 "--overlap", "0"]) == 2
    assert "--hr-scale" in capsys.readouterr().err and not (tmp_path / "f.tif").exists()
    embed_scene(model, tmp_path / "u8.tif", tmp_path / "ref.tif", tile=64, overlap=0)
    embed_scene(model, tmp_path / "u16.tif", tmp_path / "max.tif", tile=64, overlap=0, hr_scale="max=10200")
    embed_scene(model, tmp_path / "u16.tif", tmp_path / "pct.tif", tile=64, overlap=0, hr_scale="percentile=0,100")
    with rasterio.open(tmp_path / "ref.tif") as r, rasterio.open(tmp_path / "max.tif") as m:
        np.testing.assert_allclose(m.read(), r.read(), rtol=1e-4, atol=1e-4)   # x 40 / 40: the same input
    with rasterio.open(tmp_path / "pct.tif") as p:
        assert np.isfinite(p.read()).all()
    for bad in ("max=0", "max=abc", "percentile=5", "percentile=90,10", "gamma=2"):
        with pytest.raises(ValueError, match="--hr-scale"):
            embed_scene(model, tmp_path / "u16.tif", tmp_path / "f.tif", tile=64, overlap=0, hr_scale=bad)


def test_output_onto_the_input_is_refused(model, tmp_path):
    """`embed scene.tif -o scene.tif` replaced the scene with its features."""
    write_scene(tmp_path / "s.tif", 64, 64)
    before = (tmp_path / "s.tif").read_bytes()
    os.link(tmp_path / "s.tif", tmp_path / "same.tif")  # another name, the same file
    for out in ("s.tif", "same.tif"):
        with pytest.raises(ValueError, match="is an input of this run"):
            embed_scene(model, tmp_path / "s.tif", tmp_path / out, tile=64, overlap=0)
    assert (tmp_path / "s.tif").read_bytes() == before


def test_interrupted_write_leaves_nothing(model, tmp_path, monkeypatch):
    write_scene(tmp_path / "s.tif", 300, 300)
    import skysense_fast.infer.runner as runner

    calls = {"n": 0}
    real = runner.run_tiles

    def failing(*a, **k):
        for item in real(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(runner, "run_tiles", failing)
    with pytest.raises(KeyboardInterrupt):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_resumable_run_continues_and_matches(model, tmp_path, monkeypatch):
    write_scene(tmp_path / "s.tif", 640, 200)                # 20 output rows: pieces of 6 rows
    whole = embed_scene(model, tmp_path / "s.tif", tmp_path / "whole.tif", tile=128, overlap=32)
    from skysense_fast.infer.sinks import FileSink

    real, calls = FileSink.finish, {"n": 0}

    def crash_on_second_piece(self, final):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, final)

    monkeypatch.setattr(FileSink, "finish", crash_on_second_piece)
    with pytest.raises(KeyboardInterrupt):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=32, resume=True, chunk_rows=6)
    assert not (tmp_path / "f.tif").exists()
    parts = sorted(p.name for p in (tmp_path / "f.tif.parts").iterdir())
    assert parts == ["manifest.json", "rows_0000000_0000006.tif"]  # the crashed piece left no file
    monkeypatch.setattr(FileSink, "finish", real)
    again = embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=32, resume=True, chunk_rows=6)
    assert 0 < again["tiles"] < whole["tiles"]               # the finished piece was not recomputed
    assert not (tmp_path / "f.tif.parts").exists()
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "f.tif") as b:
        np.testing.assert_allclose(b.read(), a.read(), rtol=1e-5, atol=1e-5)
        assert b.transform == a.transform and b.crs == a.crs and b.descriptions == a.descriptions
    # pieces of another run are not mixed in
    (tmp_path / "g.tif.parts").mkdir()
    (tmp_path / "g.tif.parts" / "manifest.json").write_text('{"tile": 64}')
    with pytest.raises(ValueError, match="pieces of another run"):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "g.tif", tile=128, overlap=32, resume=True)
    # nor pieces made with other weights or another dtype (the manifest did not record them)
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(FileSink, "finish", crash_on_second_piece)
        calls["n"] = 0
        embed_scene(model, tmp_path / "s.tif", tmp_path / "h.tif", tile=128, overlap=32, resume=True, chunk_rows=6)
    monkeypatch.setattr(FileSink, "finish", real)
    other = models.create("skysense-tiny").eval()
    with pytest.raises(ValueError, match="differs in model"):
        embed_scene(other, tmp_path / "s.tif", tmp_path / "h.tif", tile=128, overlap=32, resume=True, chunk_rows=6)
    with pytest.raises(ValueError, match="differs in dtype"):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "h.tif", tile=128, overlap=32, resume=True, chunk_rows=6,
                    dtype=torch.bfloat16)


def test_torchrun_ranks_write_one_output(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    write_scene(tmp_path / "s.tif", 480, 160)
    base = ["embed", str(tmp_path / "s.tif"), "--tile", "128", "--overlap", "32", "--chunk-rows", "4"]
    assert main(base + ["-o", str(tmp_path / "one.tif")]) == 0
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "skysense_fast.cli", *base, "-o", str(tmp_path / "two.tif")],
                       check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1                       # rank 0 reports
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "two.tif") as b:
        np.testing.assert_allclose(b.read(), a.read(), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.tif", "s.tif", "two.tif"]


def test_bad_arguments(model, tmp_path):
    write_scene(tmp_path / "s.tif", 64, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=100)
    with pytest.raises(FileNotFoundError, match="input not found"):
        embed_scene(model, tmp_path / "missing.tif", tmp_path / "f.tif")
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(ValueError, match="not a readable raster"):
        embed_scene(model, tmp_path / "text.tif", tmp_path / "f.tif")
    with rasterio.open(tmp_path / "one.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(0, 0, 1, 1)) as d:
        d.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="has 1 band\\(s\\); the HR branch needs 3"):
        embed_scene(model, tmp_path / "one.tif", tmp_path / "f.tif")


def test_cli_embed_demo_info_and_errors(tmp_path, capsys):
    write_scene(tmp_path / "s.tif", 128, 160)
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "f.tif"), "--tile", "128",
                 "--overlap", "32"]) == 0
    assert "feature bands" in capsys.readouterr().out and (tmp_path / "f.tif").exists()
    assert main(["embed", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "g.tif")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "g.tif"), "--config", "skysense-9b"]) == 2
    assert "unknown SkySense config" in capsys.readouterr().err
    assert main(["demo", "--out-dir", str(tmp_path / "demo")]) == 0
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"demo_scene.tif", "demo_features.tif", "demo.png"}
    assert main(["info"]) == 0


@pytest.mark.parametrize("fmt,part", [("export", "hr"), ("torchscript", "model")])
def test_cli_export(tmp_path, fmt, part, capsys):
    out = tmp_path / f"m.{'pt2' if fmt == 'export' else 'pt'}"
    assert main(["export", "-o", str(out), "--format", fmt, "--part", part, "--size", "128"]) == 0
    x = torch.randn(1, 3, 128, 128)
    if fmt == "export":
        loaded = torch.export.load(str(out)).module()
        torch.manual_seed(0)
        ref = models.create("skysense-tiny").eval().hr
        torch.testing.assert_close(loaded(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    else:
        loaded = torch.jit.load(str(out))
        assert loaded(x, torch.tensor([[1.0, 2.0]]))[0].shape == (1, 64, 4, 4)
    assert main(["export", "-o", str(out), "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def write_series(folder, names, bands, crs, transform, size, linear=False, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for n in names:
        x = rng.random((bands, *size)).astype(np.float32) * (0.2 if linear else 3000)
        with rasterio.open(folder / n, "w", driver="GTiff", height=size[0], width=size[1], count=bands,
                           dtype="float32", crs=crs, transform=transform, nodata=-9999) as d:
            d.write(x)


def test_parse_dates_and_find_series(tmp_path):
    import datetime as dt

    from skysense_fast.data import find_series, parse_date

    assert parse_date("S2A_MSIL2A_20210615T103021_N0300.tif") == dt.date(2021, 6, 15)
    assert parse_date("s1_2020-02-29.tif") == dt.date(2020, 2, 29)
    with pytest.raises(ValueError, match="no acquisition date"):
        parse_date("scene_final.tif")
    write_series(tmp_path / "s2", ["b_20210701.tif", "a_20210301.tif"], 10, "EPSG:32633",
                 from_origin(500000, 5000000, 10, 10), (20, 20))
    acq = find_series(tmp_path / "s2")
    assert [a.doy for a in acq] == [60, 182]  # sorted by date
    with pytest.raises(FileNotFoundError, match="series folder or file not found"):
        find_series(tmp_path / "nope")
    # no date in the name: the GeoTIFF's tags
    write_series(tmp_path / "tagged", ["frame.tif"], 2, "EPSG:32633", from_origin(500000, 5000000, 10, 10), (4, 4))
    with rasterio.open(tmp_path / "tagged" / "frame.tif", "r+") as d:
        d.update_tags(TIFFTAG_DATETIME="2021:07:04 10:30:00")
    assert parse_date(str(tmp_path / "tagged" / "frame.tif")) == dt.date(2021, 7, 4)


def test_official_s2_band_order(model, tmp_path):
    """The official S2 files store B8 fourth (their reader takes bands [1,2,3,5,6,7,4,8,9,10]);
    embed read them as if in the model's order. --s2-band-order official reads them right."""
    from skysense_fast.data.series import OFFICIAL_S2_ORDER

    write_scene(tmp_path / "s.tif", 64, 64)
    write_series(tmp_path / "s2", ["S2_20210301.tif"], 10, "EPSG:32633", from_origin(500000, 5000000, 10, 10), (8, 8))
    with rasterio.open(tmp_path / "s2" / "S2_20210301.tif") as d:
        model_order, profile = d.read(), d.profile
    stored = np.empty_like(model_order)
    stored[list(OFFICIAL_S2_ORDER)] = model_order   # B8 (model band 6) in stored slot 3, ...
    assert np.array_equal(stored[[0, 1, 2, 4, 5, 6, 3, 7, 8, 9]], model_order)
    (tmp_path / "off").mkdir()
    with rasterio.open(tmp_path / "off" / "S2_20210301.tif", "w", **profile) as d:
        d.write(stored)
    embed_scene(model, tmp_path / "s.tif", tmp_path / "ref.tif", tile=64, overlap=0, s2=tmp_path / "s2")
    embed_scene(model, tmp_path / "s.tif", tmp_path / "off.tif", tile=64, overlap=0, s2=tmp_path / "off",
                s2_band_order="official")
    embed_scene(model, tmp_path / "s.tif", tmp_path / "wrong.tif", tile=64, overlap=0, s2=tmp_path / "off")
    with rasterio.open(tmp_path / "ref.tif") as a, rasterio.open(tmp_path / "off.tif") as b, \
            rasterio.open(tmp_path / "wrong.tif") as c:
        np.testing.assert_allclose(b.read(), a.read(), rtol=1e-5, atol=1e-5)
        assert not np.allclose(c.read(), a.read(), rtol=1e-3, atol=1e-3)


def test_multimodal_embed_reprojects_series(model, tmp_path):
    write_scene(tmp_path / "s.tif", 256, 320)  # EPSG:32633, 0.5 m: 128 m x 160 m
    # S2 in geographic coordinates around the scene; S1 in linear power, UTM at 10 m
    write_series(tmp_path / "s2", ["S2_20210301.tif", "S2_20210601.tif"], 10, "EPSG:4326",
                 from_origin(14.99, 45.16, 0.0002, 0.0002), (200, 200))
    write_series(tmp_path / "s1", ["S1_20210310.tif"], 2, "EPSG:32633", from_origin(499950, 5000050, 10, 10), (30, 30),
                 linear=True)
    info = embed_scene(model, tmp_path / "s.tif", tmp_path / "f.tif", tile=128, overlap=0, s2=tmp_path / "s2",
                       s1=tmp_path / "s1")
    embed_scene(model, tmp_path / "s.tif", tmp_path / "hr.tif", tile=128, overlap=0)
    with rasterio.open(tmp_path / "f.tif") as f, rasterio.open(tmp_path / "hr.tif") as g:
        a, b = f.read(), g.read()
    assert info["shape"] == (64, 8, 10) and np.isfinite(a).all()
    from skysense_fast.data import find_series, read_on_grid

    with rasterio.open(tmp_path / "s.tif") as d:       # the series really covers the scene's fusion grid
        grid = (d.crs, d.transform @ rasterio.Affine.scale(32, 32), (8, 10))
    for kind, bands in (("s2", 10), ("s1", 2)):
        assert read_on_grid(find_series(tmp_path / kind), bands, *grid, kind)[1].all()
    assert np.abs(a - b).max() > 1e-3  # the series changed the fused features
    write_series(tmp_path / "bad", ["x_20210101.tif"], 4, "EPSG:32633", from_origin(499950, 5000050, 10, 10), (30, 30))
    with pytest.raises(ValueError, match="has 4 band\\(s\\); S2 needs 10"):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "g.tif", tile=128, overlap=0, s2=tmp_path / "bad")
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "c.tif"), "--tile", "128", "--overlap", "0",
                 "--s2", str(tmp_path / "s2"), "--s1", str(tmp_path / "s1")]) == 0
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "c.tif"), "--s2", str(tmp_path / "bad")]) == 2
    # a series somewhere else: refused before any tile runs, through the CLI without a traceback
    write_series(tmp_path / "far", ["S2_20210301.tif"], 10, "EPSG:32633", from_origin(600000, 4000000, 10, 10), (30, 30))
    with pytest.raises(ValueError, match="S2 series does not overlap the scene"):
        embed_scene(model, tmp_path / "s.tif", tmp_path / "g.tif", tile=128, overlap=0, s2=tmp_path / "far")
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "c.tif"), "--s2", str(tmp_path / "far")]) == 2


def test_series_in_one_file_explicit_dates_and_cloud_mask(model, tmp_path):
    import datetime as dt

    from skysense_fast.data import find_series, read_on_grid
    from skysense_fast.data.series import S2_BANDS

    crs, tr = "EPSG:32633", from_origin(500000, 5000000, 10, 10)
    write_series(tmp_path / "f", ["S2_20210301.tif", "S2_20210601.tif"], 10, crs, tr, (20, 20))
    per_file = find_series(tmp_path / "f")
    stack = np.concatenate([rasterio.open(a.path).read() for a in per_file])          # (20, 20, 20)
    cloud = np.zeros((1, 20, 20), np.float32)
    cloud[:, :, :12] = 1                                                                # 60% cloudy
    for name, data in (("series.tif", stack), ("masked.tif", np.concatenate([stack[:10], cloud, stack[10:], 0 * cloud]))):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", height=20, width=20, count=len(data), dtype="float32",
                           crs=crs, transform=tr) as d:
            d.write(data)
    # explicit dates (strings or dates), one per acquisition; same pixels as the folder
    acq = find_series(tmp_path / "series.tif", ["2021-06-01", dt.date(2021, 3, 1)], band_count=10)
    assert [a.doy for a in acq] == [60, 152] and acq[0].bands == tuple(range(11, 21))
    grid = (tr, (20, 20))
    a, va = read_on_grid(per_file, 10, crs, *grid, "s2")
    b, vb = read_on_grid(acq, 10, crs, *grid, "s2")
    np.testing.assert_allclose(b[::-1], a, rtol=1e-6)           # dates reversed: sorted the other way round
    assert va.all() and vb.all()
    # dates from the band descriptions
    with rasterio.open(tmp_path / "series.tif", "r+") as d:
        for i in range(20):
            d.set_band_description(i + 1, f"{'2021-03-01' if i < 10 else '2021-06-01'} {S2_BANDS[i % 10]}")
    assert [a.doy for a in find_series(tmp_path / "series.tif", band_count=10)] == [60, 152]
    # a cloud-mask band per acquisition: cloudy pixels invalid, the acquisition masked when > half
    m = find_series(tmp_path / "masked.tif", ["2021-03-01", "2021-06-01"], band_count=10)
    assert m[0].mask_band == 11 and m[1].mask_band == 22
    x, v = read_on_grid(m, 10, crs, *grid, "s2")
    assert v.tolist() == [False, True] and (x[0, :, :, :12] == 0).all() and (x[0, :, :, 12:] != 0).any()
    with pytest.raises(ValueError, match="20 bands for 3 acquisitions"):
        find_series(tmp_path / "series.tif", ["2021-01-01", "2021-02-01", "2021-03-01"], band_count=10)
    with pytest.raises(ValueError, match="not a date"):
        find_series(tmp_path / "series.tif", ["2021-01-01", "June"], band_count=10)
    # through the command line: one file with explicit dates
    write_scene(tmp_path / "s.tif", 128, 128)
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "c.tif"), "--tile", "128", "--overlap", "0",
                 "--s2", str(tmp_path / "series.tif"), "--s2-dates", "2021-03-01,2021-06-01"]) == 0
    assert main(["embed", str(tmp_path / "s.tif"), "-o", str(tmp_path / "d.tif"), "--s2", str(tmp_path / "series.tif"),
                 "--s2-dates", "2021-03-01"]) == 2


def test_sample_prepared_from_a_wheel(tmp_path):
    import zipfile

    import yaml

    from skysense_fast.data.sample import (CROWNS_MEMBER, MEMBER, PRETRAIN_MEMBERS, main as sample_main,
                                           prepare_from_wheel)

    img = write_scene(tmp_path / "aerial.tif", 40, 50, nodata=255)
    wheel = tmp_path / "deepforest-2.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(tmp_path / "aerial.tif", MEMBER)
        for name in PRETRAIN_MEMBERS:                   # the unlabelled images, kept as they are
            z.writestr(name, b"png bytes of " + name.encode())
        z.writestr(CROWNS_MEMBER, "image_path,xmin,ymin,xmax,ymax,label\nOSBS_029.tif,2,3,10,12,Tree\n")
        z.writestr("deepforest-2.1.0.dist-info/licenses/LICENSE", "MIT License\nCopyright (c) the authors")
    out = prepare_from_wheel(wheel, tmp_path / "sample")
    with rasterio.open(out) as s, rasterio.open(tmp_path / "aerial.tif") as a:
        np.testing.assert_array_equal(s.read(), img)
        assert s.crs == a.crs and s.transform == a.transform
        assert s.nodata is None                        # 255 is a brightness, not a hole
        assert "deepforest" in s.tags()["SOURCE"]
    assert "MIT License" in (tmp_path / "sample" / "NOTICE.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "sample").iterdir()) == [
        "NOTICE.txt", "neon", "osbs_029_crowns.geojson", "osbs_029_crowns.tif", out.name]
    manifest = yaml.safe_load((tmp_path / "sample" / "neon" / "manifest.yaml").read_text())
    assert [e["hr"] for e in manifest] == [n.split("/")[-1] for n in PRETRAIN_MEMBERS]
    assert manifest[0]["latlon"] == pytest.approx([44.955, -110.645], abs=1e-3)   # UTM 12N corner in the name
    soap = (tmp_path / "sample" / "neon" / manifest[2]["hr"]).read_bytes()
    assert soap == b"png bytes of deepforest/data/SOAP_031.png"
    with rasterio.open(tmp_path / "sample" / "osbs_029_crowns.tif") as c:
        crowns = c.read(1)
        assert c.transform == s.transform and c.nodata == 0
    expect = np.ones((40, 50), np.uint8)
    expect[3:12, 2:10] = 2                             # the box, in pixels: rows ymin..ymax, columns xmin..xmax
    np.testing.assert_array_equal(crowns, expect)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not the expected"):
        prepare_from_wheel(tmp_path / "bad.whl", tmp_path / "s2")
    assert sample_main([str(tmp_path / "bad.whl")]) == 2


def test_demo_synthetic_fallback(tmp_path, capsys):
    assert main(["demo", "--synthetic", "--out-dir", str(tmp_path)]) == 0
    assert "synthetic" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"demo_scene.tif", "demo_features.tif", "demo.png"}


def test_series_band_names_checked_and_reordered(tmp_path):
    from skysense_fast.data import find_series, read_on_grid
    from skysense_fast.data.series import S2_BANDS

    crs, tr = "EPSG:32633", from_origin(500000, 5000000, 10, 10)
    write_series(tmp_path / "a", ["S2_20210301.tif"], 10, crs, tr, (8, 8))
    write_series(tmp_path / "b", ["S2_20210301.tif"], 10, crs, tr, (8, 8))
    src = rasterio.open(tmp_path / "a" / "S2_20210301.tif").read()
    order = [9, 0, 8, 1, 7, 2, 6, 3, 5, 4]                     # stored shuffled, named "B02", "B8A_20m", ...
    names = [f"{'B0' + n[1:] if len(n) == 2 else n}_10m" for n in S2_BANDS]
    with rasterio.open(tmp_path / "b" / "S2_20210301.tif", "r+") as d:
        d.write(src[order])
        for i, j in enumerate(order):
            d.set_band_description(i + 1, names[j])
    grid = (crs, tr, (8, 8), "s2")
    a, _ = read_on_grid(find_series(tmp_path / "a"), 10, *grid)
    b, _ = read_on_grid(find_series(tmp_path / "b"), 10, *grid)
    np.testing.assert_allclose(b, a, rtol=1e-6)                  # put back in B2..B12 order
    with rasterio.open(tmp_path / "b" / "S2_20210301.tif", "r+") as d:
        d.set_band_description(1, "B1")                          # coastal aerosol: not a SkySense band
    with pytest.raises(ValueError, match="bands are named B1, .*S2 needs B2, B3"):
        read_on_grid(find_series(tmp_path / "b"), 10, *grid)


def test_input_statistics_travel_with_the_weights(tmp_path):
    from skysense_fast.data import Normalisation
    from skysense_fast.weights import load_weights, save_weights

    write_scene(tmp_path / "s.tif", 64, 64)
    torch.manual_seed(0)
    m = models.create("skysense-tiny").eval()
    embed_scene(m, tmp_path / "s.tif", tmp_path / "default.tif", tile=64, overlap=0)
    m.normalisation = Normalisation(hr_mean=(100.0, 100.0, 100.0), hr_std=(50.0, 50.0, 50.0))
    save_weights(m, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    m2 = models.create("skysense-tiny").eval()
    load_weights(m2, tmp_path / "w.safetensors")
    assert m2.normalisation.hr_mean == (100.0, 100.0, 100.0) and m2.normalisation.s2_mean == Normalisation().s2_mean
    embed_scene(m2, tmp_path / "s.tif", tmp_path / "custom.tif", tile=64, overlap=0)
    with rasterio.open(tmp_path / "s.tif") as d:
        img, ll = d.read(), torch.tensor([scene_latlon(d)])
    x = torch.from_numpy((img.astype(np.float32) - 100) / 50)[None]
    with torch.no_grad():
        want = m2(hr=x, latlon=ll)["fused"][0].numpy()
    with rasterio.open(tmp_path / "custom.tif") as f, rasterio.open(tmp_path / "default.tif") as g:
        np.testing.assert_allclose(f.read(), want, rtol=1e-5, atol=1e-5)
        assert np.abs(f.read() - g.read()).max() > 1e-3
    with pytest.raises(ValueError, match="stds > 0"):
        Normalisation(s1_std=(1.0, 0.0))


@pytest.mark.gpu
def test_embed_on_cuda_matches_cpu(model, tmp_path):
    write_scene(tmp_path / "s.tif", 256, 320)
    embed_scene(model, tmp_path / "s.tif", tmp_path / "cpu.tif", tile=128, overlap=32)
    embed_scene(model, tmp_path / "s.tif", tmp_path / "gpu.tif", tile=128, overlap=32, device="cuda")
    with rasterio.open(tmp_path / "cpu.tif") as a, rasterio.open(tmp_path / "gpu.tif") as b:
        np.testing.assert_allclose(b.read(), a.read(), rtol=1e-3, atol=1e-3)
    model.cpu()


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_cli_export_multimodal(tmp_path, fmt, capsys):
    out = tmp_path / f"mm.{'pt2' if fmt == 'export' else 'pt'}"
    assert main(["export", "-o", str(out), "--format", fmt, "--part", "multimodal", "--size", "128",
                 "--frames", "3"]) == 0
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 3, 128, 128, generator=g), torch.randn(1, 3, 10, 4, 4, generator=g),
         torch.randn(1, 3, 2, 4, 4, generator=g), torch.tensor([[10, 100, 200]]), torch.tensor([[20, 120, 300]]),
         torch.tensor([[True, False, True]]), torch.ones(1, 3, dtype=torch.bool), torch.tensor([[45.0, 7.0]]))
    loaded = torch.export.load(str(out)).module() if fmt == "export" else torch.jit.load(str(out))
    torch.manual_seed(0)
    ref = models.create("skysense-tiny").eval()
    names = ("hr", "s2", "s1", "doy_s2", "doy_s1", "valid_s2", "valid_s1", "latlon")
    with torch.no_grad():
        want = ref(**dict(zip(names, x)))
        got = loaded(*x)
    torch.testing.assert_close(got[0], want["fused"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want["geo"], rtol=1e-4, atol=1e-4)
    assert main(["export", "-o", str(out), "--part", "multimodal", "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
