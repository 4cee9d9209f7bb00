"""Large-scene inference: tiled, streaming, georeferenced output."""

from .tiled import embed_scene

__all__ = ["embed_scene"]
