"""Reading imagery (rasterio): GeoTIFF windows, normalisation statistics, geolocation."""

from .geotiff import HR_MEAN, HR_STD, open_raster, scene_latlon
from .normalisation import Normalisation
from .series import S1_BANDS, S2_BANDS, Acquisition, find_series, parse_date, read_on_grid

__all__ = ["HR_MEAN", "HR_STD", "S1_BANDS", "S2_BANDS", "Acquisition", "Normalisation", "find_series", "open_raster",
           "parse_date",
           "read_on_grid", "scene_latlon"]
