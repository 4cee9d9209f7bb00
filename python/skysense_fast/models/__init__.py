"""SkySense: encoders, fusion, geo-context, named configs.

>>> from skysense_fast import models
>>> model = models.create("skysense-tiny")
>>> models.list_configs()
['skysense-2b', 'skysense-base', 'skysense-tiny']
"""

from .config import SkySenseConfig, get_config, list_configs, register_config
from .geo_context import GeoContext, region_index
from .skysense import SkySense, create
from .swinv2 import SwinV2Encoder
from .vit import UPHead, ViTEncoder

__all__ = ["GeoContext", "SkySense", "SkySenseConfig", "SwinV2Encoder", "UPHead", "ViTEncoder", "create", "get_config",
           "list_configs", "region_index", "register_config"]
