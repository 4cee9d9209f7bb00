"""The demo's real sample image, prepared from a package on PyPI at setup time.

The deepforest 2.1.0 wheel (MIT licence) ships ``OSBS_029.tif``: a real 400 x 400 RGB
aerial image at 10 cm (NEON, Ordway-Swisher Biological Station, Florida; UTM 17N), and
``OSBS_029.csv``: its 61 annotated tree crowns as pixel boxes. The crowns become a class raster
on the image's grid (``osbs_029_crowns.tif``: 2 = inside a crown box, 1 = outside) and a
GeoJSON layer of the boxes in the image's CRS (``osbs_029_crowns.geojson``, class 2).
``make demo`` downloads that wheel with pip (the registry, like any dependency) and runs
``python -m skysense_fast.data.sample WHEEL``, which converts the image into
``skysense_fast/data/sample/`` (a tiled, compressed GeoTIFF, without the source's nodata
flag: 255 is a real brightness there) next to the licence notice. Nothing is downloaded
when the demo runs, and without the prepared file the demo uses a generated scene.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

from ..errors import InputError

SAMPLE_DIR = Path(__file__).parent / "sample"
HR_SAMPLE = SAMPLE_DIR / "osbs_029_rgb_10cm.tif"
WHEEL = "deepforest==2.1.0"
MEMBER = "deepforest/data/OSBS_029.tif"
CROWNS_MEMBER = "deepforest/data/OSBS_029.csv"
CROWNS_RASTER = SAMPLE_DIR / "osbs_029_crowns.tif"
CROWNS_VECTOR = SAMPLE_DIR / "osbs_029_crowns.geojson"
BACKGROUND, CROWN = 1, 2
# unlabelled NEON images of two other sites in the same wheel (PNG, no CRS), for HR-only
# pretraining: Yellowstone Northern Range (the names hold the tiles' UTM 12N corner) and
# Soaproot Saddle (NEON's published site location)
PRETRAIN_MEMBERS = {"deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png": ("EPSG:32612", 528000, 4978000),
                    "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png": ("EPSG:32612", 541000, 4977000),
                    "deepforest/data/SOAP_031.png": (37.03337, -119.26219),
                    "deepforest/data/SOAP_061.png": (37.03337, -119.26219)}
PRETRAIN_DIR = SAMPLE_DIR / "neon"
PRETRAIN_MANIFEST = PRETRAIN_DIR / "manifest.yaml"
DESCRIPTION = ("real 10 cm RGB aerial image, NEON site OSBS (Florida), from the deepforest 2.1.0 package, "
               "MIT licence")


def hr_sample() -> Path | None:
    """The prepared real HR sample, or None when it has not been prepared."""
    return HR_SAMPLE if HR_SAMPLE.exists() else None


def prepare_from_wheel(wheel: str | os.PathLike, out_dir: str | os.PathLike = SAMPLE_DIR) -> Path:
    """Convert the wheel's aerial image into the sample GeoTIFF (atomically) with its notice."""
    import rasterio
    from rasterio.io import MemoryFile

    out_dir = Path(out_dir)
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
            crowns = z.read(CROWNS_MEMBER).decode()
            licences = [n for n in z.namelist() if n.endswith(("LICENSE", "LICENSE.txt", "AUTHORS.md"))]
            notice = "\n\n".join(f"--- {n} ---\n{z.read(n).decode('utf-8', 'replace')}" for n in licences)
            unlabelled = {name: z.read(name) for name in PRETRAIN_MEMBERS}
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"{wheel}: not the expected {WHEEL} wheel with {MEMBER} ({e})") from None
    with MemoryFile(data) as mem, mem.open() as src:
        if src.count < 3 or src.crs is None:
            raise InputError(f"{MEMBER} in {wheel}: expected a georeferenced RGB image, got {src.count} band(s), "
                             f"CRS {src.crs}")
        img = src.read([1, 2, 3])
        profile = dict(driver="GTiff", height=src.height, width=src.width, count=3, dtype=img.dtype.name,
                       crs=src.crs, transform=src.transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / HR_SAMPLE.name
    tmp = final.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(img)
        dst.update_tags(SOURCE=f"{WHEEL}: {MEMBER}", DESCRIPTION=DESCRIPTION)
        for i, name in enumerate(("red", "green", "blue")):
            dst.set_band_description(i + 1, name)
    notice_tmp = out_dir / "NOTICE.partial.txt"
    notice_tmp.write_text(f"{final.name}: {DESCRIPTION}.\nConverted from {MEMBER} of the {WHEEL} wheel.\n\n{notice}\n")
    os.replace(notice_tmp, out_dir / "NOTICE.txt")
    os.replace(tmp, final)
    write_crowns(crowns, profile, out_dir)
    write_pretraining_images(unlabelled, out_dir / PRETRAIN_DIR.name)
    return final


def write_pretraining_images(images: dict[str, bytes], folder: Path) -> Path:
    """The unlabelled images as they are (PNG) and a pretraining manifest with their
    locations (``data.manifest`` of ``configs/pretrain/neon-hr-tiny.yaml``), atomically."""
    import yaml
    from rasterio.warp import transform

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for member, where in PRETRAIN_MEMBERS.items():
        name = os.path.basename(member)
        tmp = folder / f"{name}.partial"
        tmp.write_bytes(images[member])
        os.replace(tmp, folder / name)
        if len(where) == 3:   # a UTM corner: the image's location in degrees
            crs, x, y = where
            lon, lat = transform(crs, "EPSG:4326", [x], [y])
            lat_lon = [round(float(lat[0]), 5), round(float(lon[0]), 5)]
        else:
            lat_lon = [float(where[0]), float(where[1])]
        entries.append({"hr": name, "latlon": lat_lon})
    tmp = folder / "manifest.partial.yaml"
    tmp.write_text("# unlabelled NEON images from the deepforest 2.1.0 wheel (MIT), for HR-only pretraining\n"
                   + yaml.safe_dump(entries, sort_keys=False))
    os.replace(tmp, folder / PRETRAIN_MANIFEST.name)
    return folder / PRETRAIN_MANIFEST.name


def crown_boxes(csv_text: str) -> list[tuple[int, int, int, int]]:
    """(xmin, ymin, xmax, ymax) pixel boxes of the annotation CSV."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    try:
        return [(int(r["xmin"]), int(r["ymin"]), int(r["xmax"]), int(r["ymax"])) for r in rows]
    except (KeyError, ValueError) as e:
        raise InputError(f"{CROWNS_MEMBER}: expected xmin,ymin,xmax,ymax columns of integers ({e})") from None


def write_crowns(csv_text: str, profile: dict, out_dir: Path) -> None:
    """The crown boxes as a class raster on the image grid and as GeoJSON polygons (atomically)."""
    import json

    import numpy as np
    import rasterio

    boxes = crown_boxes(csv_text)
    labels = np.full((profile["height"], profile["width"]), BACKGROUND, np.uint8)
    for x0, y0, x1, y1 in boxes:
        labels[y0:y1, x0:x1] = CROWN
    tmp = out_dir / "crowns.partial.tif"
    with rasterio.open(tmp, "w", **dict(profile, count=1, dtype="uint8", nodata=0)) as dst:
        dst.write(labels[None])
        dst.update_tags(SOURCE=f"{WHEEL}: {CROWNS_MEMBER}", CLASS_1="background", CLASS_2="tree crown")
    os.replace(tmp, out_dir / CROWNS_RASTER.name)
    t = profile["transform"]
    features = []
    for x0, y0, x1, y1 in boxes:
        ring = [list(t @ (x, y)) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
        features.append({"type": "Feature", "properties": {"class": CROWN},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    crs = profile["crs"].to_epsg()
    layer = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": f"EPSG:{crs}"}},
             "features": features}
    tmp = out_dir / "crowns.partial.geojson"
    tmp.write_text(json.dumps(layer))
    os.replace(tmp, out_dir / CROWNS_VECTOR.name)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m skysense_fast.data.sample DEEPFOREST_WHEEL", file=sys.stderr)
        return 2
    try:
        path = prepare_from_wheel(args[0])
    except ValueError as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return 2
    print(f"sample: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
