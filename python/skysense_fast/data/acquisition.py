"""One acquisition of a Sentinel series, and the band names: what the GeoTIFF reader
(:mod:`.series`) and the STAC reader (:mod:`.stac`) both make and read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# The official SkySense S2 GeoTIFFs store B8 fourth (B2, B3, B4, B8, B5, B6, B7, B8A, B11, B12);
# its reader takes stored bands [1, 2, 3, 5, 6, 7, 4, 8, 9, 10]: position of each model band
OFFICIAL_S2_ORDER = (0, 1, 2, 4, 5, 6, 3, 7, 8, 9)
S1_BANDS = ("VV", "VH")


@dataclass(frozen=True)
class StacPart:
    """One item's share of an acquisition: an href per model band (in the model's order), the
    SCL href (or None), the DN offset to add, and the nodata value of the band assets."""

    bands: tuple[str, ...]
    scl: str | None = None
    offset: float = 0.0
    nodata: float | None = None


@dataclass(frozen=True)
class Acquisition:
    """One acquisition: a file, or a group of bands of a multi-band series file.

    ``bands``: the 1-based bands holding it (None: the whole file, B bands or B + 1 with a
    cloud mask last); ``mask_band``: a band whose non-zero pixels are clouds / invalid;
    ``band_order``: where each of the model's bands is stored among them (0-based), for files
    not stored in the model's order (:data:`OFFICIAL_S2_ORDER`); band names in the
    descriptions, where every band has one, decide instead. ``parts``: an acquisition from
    STAC items (:mod:`.stac`): single-band files named by band, mosaicked per day.
    """

    path: str
    date: dt.date
    bands: tuple[int, ...] | None = None
    mask_band: int | None = None
    band_order: tuple[int, ...] | None = None
    parts: tuple[StacPart, ...] = ()   # from STAC items: one file per band, per item of the day

    @property
    def files(self) -> list[str]:
        """A file of each footprint (what coverage checks open)."""
        return [p.bands[0] for p in self.parts] if self.parts else [self.path]

    @property
    def every_file(self) -> list[str]:
        """Every file read for it (each band and SCL file of STAC items): what an output must
        never replace, and what a resumed run's pieces must have been made from."""
        if not self.parts:
            return [self.path]
        return [f for p in self.parts for f in (*p.bands, *((p.scl,) if p.scl else ()))]

    @property
    def doy(self) -> int:
        return self.date.timetuple().tm_yday
