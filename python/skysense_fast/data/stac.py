"""Sentinel-2 / Sentinel-1 series from STAC items (pystac): an ItemCollection file, one item
file, or a list of item files. Each item's assets are matched to the model's bands by name
(asset keys and ``eo:bands`` / ``bands`` of Earth Search and Planetary Computer: ``blue`` /
``B02``, ``nir08`` / ``B8A``, ``vv``, ...), its date read from the item, its clouds from the
scene classification (SCL) asset where there is one, and the Sentinel-2 L2A offset taken
from the item's metadata: from processing baseline 04.00 the L2A data carry +1000 DN
(reflectance = (DN - 1000) / 10000), which some catalogues remove and others keep, and the
model's statistics are of data without it. Items of one day are one acquisition (their
footprints mosaicked). Hrefs are read by GDAL as they are: local, ``https://``, ``s3://``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .acquisition import S1_BANDS, S2_BANDS, Acquisition, StacPart

# Earth Search asset keys (and eo common names) -> band; Planetary Computer uses B02 ... B8A
_S2_KEYS = {"coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "rededge1": "B5", "rededge2": "B6",
            "rededge3": "B7", "nir": "B8", "nir08": "B8A", "nir09": "B9", "swir16": "B11", "swir22": "B12"}
_S2_NAME = re.compile(r"B0?(\d{1,2}A?)")
# SCL classes that are no observation of the ground: no data, saturated / defective, cloud
# shadow, cloud (medium, high probability), thin cirrus
SCL_INVALID = (0, 1, 3, 8, 9, 10)
S2_OFFSET = -1000.0          # BOA_ADD_OFFSET from processing baseline 04.00 (25 January 2022)


def is_stac(source) -> bool:
    """A STAC source: a .json / .geojson file (or a list of them), or a file holding a
    GeoJSON Feature / FeatureCollection."""
    items = source if isinstance(source, (list, tuple)) else [source]
    if not items or not all(isinstance(s, (str, os.PathLike)) for s in items):
        return False
    names = [os.fspath(s) for s in items]
    return all(n.lower().endswith((".json", ".geojson")) for n in names)


def load_items(source) -> list:
    """pystac Items with absolute hrefs, from a collection file, an item file or a list of them."""
    import pystac

    files = [os.fspath(s) for s in (source if isinstance(source, (list, tuple)) else [source])]
    items = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"STAC file not found: {path}")
        try:
            with open(path) as f:
                raw = json.load(f)
        except ValueError as e:
            raise InputError(f"{path} is not JSON ({e})") from None
        kind = raw.get("type") if isinstance(raw, dict) else None
        try:
            if kind == "FeatureCollection":
                found = list(pystac.ItemCollection.from_dict(raw, preserve_dict=False))
            elif kind == "Feature":
                found = [pystac.Item.from_dict(raw, preserve_dict=False)]
            else:
                raise InputError(f"{path} is neither a STAC ItemCollection nor a STAC Item (its type is {kind!r})")
            base = os.path.dirname(os.path.abspath(path))
            for item in found:
                if not isinstance(item.properties, dict) or not isinstance(item.assets, dict):
                    raise InputError(f"{path}: STAC item {item.id} needs properties and assets mappings")
                for asset in item.assets.values():   # relative hrefs are relative to the file that holds them
                    if "://" not in asset.href and not os.path.isabs(asset.href):
                        asset.href = os.path.normpath(os.path.join(base, asset.href))
        except (AttributeError, KeyError, TypeError, ValueError, pystac.STACError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path}: not a valid STAC item or collection ({type(e).__name__}: {e})") from None
        items += found
    if not items:
        raise InputError(f"no STAC items in {', '.join(files)}")
    return items


def _band_info(asset) -> list[dict]:
    """The asset's band objects: STAC 1.1 ``bands`` or the eo extension's ``eo:bands``."""
    fields = asset.extra_fields
    bands = fields.get("bands") or fields.get("eo:bands") or []
    return [b for b in bands if isinstance(b, dict)]


def _s2_band(key: str, asset) -> str | None:
    """The Sentinel-2 band an asset holds (B2 ... B12, SCL), or None (a multi-band or other asset)."""
    if key.lower().endswith("-jp2"):
        return None   # the same bands as JPEG 2000: the COGs are taken
    info = _band_info(asset)
    if len(info) > 1:
        return None   # visual (RGB), ...
    names = [key] + [str(info[0].get(k, "")) for k in ("name", "eo:common_name", "common_name")] if info else [key]
    for n in names:
        if n.upper() == "SCL":
            return "SCL"
        if n.lower() in _S2_KEYS:
            return _S2_KEYS[n.lower()]
        m = _S2_NAME.fullmatch(n.upper())
        if m:
            return "B" + m.group(1)
    return None


def _baseline(item) -> float | None:
    text = item.properties.get("s2:processing_baseline")
    if text is None:
        return None
    try:
        return float(str(text))
    except ValueError:
        raise InputError(f"STAC item {item.id}: s2:processing_baseline {text!r} is not a number") from None


def s2_offset(item, band_assets: Sequence) -> float:
    """The DN offset that brings this item's L2A values to the model's (pre-04.00) scale.

    From the item's metadata only: Earth Search's ``earthsearch:boa_offset_applied`` (true:
    its files had the offset removed), else the processing baseline (>= 04.00: the files keep
    +1000, as ESA ships them and Planetary Computer serves them), else the assets' published
    ``raster:bands`` offset and scale. An item that says none of these is refused."""
    applied = item.properties.get("earthsearch:boa_offset_applied")
    baseline = _baseline(item)
    if applied is not None:   # Earth Search's word decides; its published raster offset does not
        if not isinstance(applied, bool):
            raise InputError(f"STAC item {item.id}: earthsearch:boa_offset_applied must be true or false, got "
                             f"{applied!r}")
        if applied:
            return 0.0
        if baseline is None:
            raise InputError(f"STAC item {item.id}: earthsearch:boa_offset_applied is false but there is no "
                             "s2:processing_baseline to tell whether the files carry the +1000 offset")
        return S2_OFFSET if baseline >= 4.0 else 0.0
    if baseline is not None:
        return S2_OFFSET if baseline >= 4.0 else 0.0
    offsets = set()
    for asset in band_assets:
        raster = asset.extra_fields.get("raster:bands") or _band_info(asset)
        band = raster[0] if raster and isinstance(raster[0], dict) else {}
        offset = band.get("offset", band.get("raster:offset", asset.extra_fields.get("raster:offset")))
        scale = band.get("scale", band.get("raster:scale", asset.extra_fields.get("raster:scale")))
        if offset is not None and scale:
            try:
                offsets.add(round(float(offset) / float(scale)))
            except (TypeError, ValueError):
                raise InputError(f"STAC item {item.id}: its raster offset / scale {offset!r} / {scale!r} are not "
                                 "numbers") from None
    if len(offsets) == 1:
        return float(offsets.pop())
    raise InputError(f"STAC item {item.id}: cannot tell whether its Sentinel-2 values carry the +1000 offset of "
                     "processing baseline 04.00 (it has no s2:processing_baseline, no earthsearch:boa_offset_applied "
                     f"and {'no' if not offsets else 'inconsistent'} raster:bands offset/scale); it is never guessed")


def _date(item) -> dt.date:
    when = item.datetime or (item.common_metadata.start_datetime if item.common_metadata else None)
    if when is None:
        raise InputError(f"STAC item {item.id} has no datetime (nor start_datetime)")
    return when.date()


def _nodata(assets) -> float | None:
    for asset in assets:
        raster = asset.extra_fields.get("raster:bands") or _band_info(asset)
        if raster and isinstance(raster[0], dict) and raster[0].get("nodata") is not None:
            return float(raster[0]["nodata"])
    return None


def _s2_part(item) -> StacPart:

    found: dict[str, Any] = {}
    for key, asset in item.assets.items():
        band = _s2_band(key, asset)
        if band is not None and band not in found:
            found[band] = asset
    missing = [b for b in S2_BANDS if b not in found]
    if missing:
        raise InputError(f"STAC item {item.id} has no asset for Sentinel-2 band(s) {', '.join(missing)} (assets: "
                         f"{', '.join(sorted(item.assets))})")
    assets = [found[b] for b in S2_BANDS]
    scl = found.get("SCL")
    return StacPart(tuple(a.href for a in assets), scl.href if scl is not None else None, s2_offset(item, assets),
                    _nodata(assets))


def _s1_part(item) -> StacPart:

    collection = (item.collection_id or "").lower()
    if "grd" in collection and "rtc" not in collection:
        raise InputError(f"STAC item {item.id} is of {item.collection_id}: uncalibrated GRD values are not "
                         "backscatter; use radiometrically terrain-corrected items (e.g. sentinel-1-rtc)")
    found = {}
    for key, asset in item.assets.items():
        names = [key] + [str(b.get("name", "")) for b in _band_info(asset)]
        for n in names:
            if n.upper() in S1_BANDS and n.upper() not in found:
                found[n.upper()] = asset
    missing = [b for b in S1_BANDS if b not in found]
    if missing:
        raise InputError(f"STAC item {item.id} has no {' / '.join(missing)} asset (assets: "
                         f"{', '.join(sorted(item.assets))}); the S1 encoder needs VV and VH")
    assets = [found[b] for b in S1_BANDS]
    return StacPart(tuple(a.href for a in assets), None, 0.0, _nodata(assets))


def stac_series(source, kind: str) -> list:
    """:class:`~skysense_fast.data.series.Acquisition` per day of the items, sorted by date."""

    if kind not in ("s2", "s1"):
        raise InputError(f"STAC series: kind must be s2 or s1, got {kind!r}")
    by_day: dict[dt.date, list[StacPart]] = {}
    for item in load_items(source):
        part = _s2_part(item) if kind == "s2" else _s1_part(item)
        by_day.setdefault(_date(item), []).append(part)
    return [Acquisition(parts[0].bands[0], day, parts=tuple(parts)) for day, parts in sorted(by_day.items())]
