"""Class rasters onto the image grid: any CRS, nearest, nodata = no label, class values kept."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from skysense_fast.data.labels import IGNORE_INDEX, ClassMap, class_map_of, labels_on_grid


def write(path, arr, crs, transform, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[-2], width=arr.shape[-1], count=1 if arr.ndim == 2 else
                       arr.shape[0], dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as f:
        f.write(arr if arr.ndim == 3 else arr[None])


@pytest.fixture
def scene(tmp_path):
    """A 64 x 64 image at 1 m in UTM 33N; labels 1..3 (nodata 0) at 2 m in the same CRS and
    the same labels in WGS 84."""
    t = from_origin(500000, 5000064, 1, 1)
    write(tmp_path / "img.tif", np.zeros((3, 64, 64), np.uint8), "EPSG:32633", t)
    lab = np.zeros((32, 32), np.uint8)
    lab[:, :16], lab[:, 16:], lab[:8] = 1, 3, 0  # left 1, right 3, top rows unlabelled
    lab[20:24, 4:8] = 2
    write(tmp_path / "lab.tif", lab, "EPSG:32633", from_origin(500000, 5000064, 2, 2), nodata=0)
    return tmp_path, lab


def test_same_crs_labels_at_another_resolution(scene):
    tmp, lab = scene
    classes = class_map_of(tmp / "lab.tif")
    assert classes.values == (1, 2, 3)
    with rasterio.open(tmp / "img.tif") as img:
        idx = labels_on_grid(tmp / "lab.tif", img, classes)
    expect = np.where(lab == 0, IGNORE_INDEX, np.searchsorted([1, 2, 3], lab)).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_array_equal(classes.to_values(idx[idx >= 0]), np.repeat(lab, 2, 0).repeat(2, 1)[idx >= 0])


def test_labels_in_another_crs_and_windows(scene, tmp_path):
    tmp, lab = scene
    from rasterio.warp import calculate_default_transform, reproject, Resampling
    from rasterio.windows import Window

    src_t = from_origin(500000, 5000064, 2, 2)
    t, w, h = calculate_default_transform("EPSG:32633", "EPSG:4326", 32, 32, 500000, 5000000, 500064, 5000064)
    geo = np.zeros((h, w), np.uint8)
    reproject(lab, geo, src_transform=src_t, src_crs="EPSG:32633", dst_transform=t, dst_crs="EPSG:4326",
              src_nodata=0, dst_nodata=0, resampling=Resampling.nearest)
    write(tmp / "lab4326.tif", geo, "EPSG:4326", t, nodata=0)
    classes = ClassMap((1, 2, 3), ("tree", "road", "roof"))
    with rasterio.open(tmp / "img.tif") as img:
        direct = labels_on_grid(tmp / "lab.tif", img, classes)
        via = labels_on_grid(tmp / "lab4326.tif", img, classes)
        part = labels_on_grid(tmp / "lab.tif", img, classes, window=Window(10, 20, 30, 16))
    agree = (direct == via).mean()
    assert agree > 0.9  # two nearest resamplings through WGS 84: boundary pixels may differ
    np.testing.assert_array_equal(part, direct[20:36, 10:40])
    assert classes.class_names() == ["tree", "road", "roof"]


def test_bad_labels_are_clear_errors(scene):
    tmp, lab = scene
    with rasterio.open(tmp / "img.tif") as img:
        with pytest.raises(ValueError, match=r"holds class values \[3\] that are not among the 2 configured classes"):
            labels_on_grid(tmp / "lab.tif", img, ClassMap((1, 2)))
        far = np.ones((8, 8), np.uint8)
        write(tmp / "far.tif", far, "EPSG:32633", from_origin(600000, 5000064, 1, 1))
        with pytest.raises(ValueError, match="does not overlap the image"):
            labels_on_grid(tmp / "far.tif", img, ClassMap((1, 2)))
        write(tmp / "float.tif", far.astype(np.float32), "EPSG:32633", from_origin(500000, 5000064, 1, 1))
        with pytest.raises(ValueError, match="float32: a class raster holds integer classes"):
            labels_on_grid(tmp / "float.tif", img, ClassMap((1, 2)))
        with rasterio.open(tmp / "nocrs.tif", "w", driver="GTiff", height=4, width=4, count=1, dtype="uint8") as f:
            f.write(far[None, :4, :4])
        with pytest.raises(ValueError, match="has no CRS"):
            labels_on_grid(tmp / "nocrs.tif", img, ClassMap((1, 2)))
    with pytest.raises(ValueError, match=r"at least 2 distinct class value\(s\)"):
        ClassMap((1,))


def test_vector_labels_polygons_and_points(scene):
    """A GeoPackage in WGS 84 with two polygons and a point, rasterised on the UTM image grid."""
    pytest.importorskip("pyogrio")
    import pyogrio
    import shapely
    from rasterio.warp import transform_geom

    from skysense_fast.data.labels import is_vector, rasterize_labels, vector_class_map

    tmp, _ = scene
    utm = [shapely.box(500000, 5000032, 500032, 5000064), shapely.box(500040, 5000000, 500064, 5000020),
           shapely.Point(500050.5, 5000050.5)]
    wgs = [shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", shapely.geometry.mapping(g))) for g in utm]
    path = tmp / "labels.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(np.array(wgs, object)), field_data=[np.array([4, 7, 9], np.int32)],
                      fields=["cls"], geometry_type="Unknown", crs="EPSG:4326", driver="GPKG")
    assert is_vector(path)
    classes = vector_class_map(path, "cls", names=["grass", "water", "tree"])
    assert classes.values == (4, 7, 9)
    with rasterio.open(tmp / "img.tif") as img:
        idx = rasterize_labels(path, img, classes, "cls")
    assert idx.shape == (64, 64)
    assert (idx[2:30, 2:30] == 0).all()        # inside the first polygon (top-left 32 m)
    assert (idx[46:62, 42:62] == 1).all()      # the second (bottom-right)
    assert idx[13, 50] == 2                    # the point's pixel (row = 5000064 - 5000050.5)
    assert (idx == IGNORE_INDEX).mean() > 0.5  # the rest is unlabelled
    with rasterio.open(tmp / "img.tif") as img:
        with pytest.raises(ValueError, match=r"holds class values \[9\]"):
            rasterize_labels(path, img, ClassMap((4, 7)), "cls")
        with pytest.raises(ValueError, match="has no attribute 'klass'"):
            rasterize_labels(path, img, classes, "klass")
