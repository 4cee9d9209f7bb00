"""Reading imagery (rasterio): GeoTIFF windows, normalisation statistics, geolocation."""

from .geotiff import HR_MEAN, HR_STD, open_raster, scene_latlon

__all__ = ["HR_MEAN", "HR_STD", "open_raster", "scene_latlon"]
