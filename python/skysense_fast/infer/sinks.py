"""Output sinks of a tiled run: rows into one GeoTIFF written under a temporary name and
renamed when complete, or into resumable pieces of ``chunk_rows`` rows joined at the end."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rasterio.io import DatasetWriter


class FileSink:
    """Rows into one GeoTIFF, opened at the first write (when the band count is known)."""

    def __init__(self, path: str, profile: dict, output: str, top: int = 0):
        self.path, self.profile, self.output, self.top = path, profile, output, top
        self.out: DatasetWriter | None = None
        self.bands = 0

    def write(self, y: int, block: np.ndarray) -> None:
        from rasterio.windows import Window

        if self.out is None:
            import rasterio

            self.bands = block.shape[0]
            self.out = rasterio.open(self.path, "w", count=self.bands, **self.profile)
            for i in range(self.bands):
                self.out.set_band_description(i + 1, f"skysense_{self.output}_{i}")
        self.out.write(block, window=Window(0, y - self.top, block.shape[2], block.shape[1]))

    def finish(self, final: str) -> None:
        assert self.out is not None, "FileSink.finish before any write"   # a run writes every row first
        self.out.close()
        os.replace(self.path, final)

    def abort(self) -> None:
        if self.out is not None and not self.out.closed:
            self.out.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def piece_name(y0: int, y1: int) -> str:
    return f"rows_{y0:07d}_{y1:07d}.tif"


class PiecesSink:
    """Rows into pieces of ``chunk_rows`` rows; a piece is renamed into place once complete."""

    def __init__(self, folder: str, pieces: list[tuple[int, int]], profile: dict, output: str):
        self.folder, self.pieces, self.profile, self.output = folder, pieces, profile, output
        self.open: dict[int, tuple[FileSink, int]] = {}   # piece index -> (sink, rows written)

    def write(self, y: int, block: np.ndarray) -> None:
        from rasterio.transform import Affine

        for i, (p0, p1) in enumerate(self.pieces):
            lo, hi = max(y, p0), min(y + block.shape[1], p1)
            if hi <= lo:
                continue
            if i not in self.open:
                prof = dict(self.profile, height=p1 - p0,
                            transform=self.profile["transform"] @ Affine.translation(0, p0))
                self.open[i] = (FileSink(os.path.join(self.folder, piece_name(p0, p1) + ".partial"), prof,
                                          self.output, top=p0), 0)
            sink, n = self.open[i]
            sink.write(lo, block[:, lo - y:hi - y])
            n += hi - lo
            self.open[i] = (sink, n)
            if n == p1 - p0:
                sink.finish(os.path.join(self.folder, piece_name(p0, p1)))
                del self.open[i]

    def abort(self) -> None:
        for sink, _ in self.open.values():
            sink.abort()


def join_pieces(folder: str, pieces: list[tuple[int, int]], dst: str, profile: dict, output: str,
                final_sink=None) -> int:
    import rasterio

    sink = FileSink(dst + ".partial", profile, output) if final_sink is None else final_sink(dst + ".partial")
    try:
        for p0, p1 in pieces:
            with rasterio.open(os.path.join(folder, piece_name(p0, p1))) as part:
                for y in range(0, p1 - p0, 256):
                    from rasterio.windows import Window

                    h = min(256, p1 - p0 - y)
                    sink.write(p0 + y, part.read(window=Window(0, y, part.width, h)))
        sink.finish(dst)
    except BaseException:
        sink.abort()
        raise
    return sink.bands
