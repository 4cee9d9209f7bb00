"""Large-scene inference: tiled, streaming, georeferenced output. The tiler (tile origins,
blending weight, batched reads through the model), the sinks (one atomic GeoTIFF, or
resumable pieces) and the runner (rows of tiles blended into finished rows; pieces over
torchrun ranks) are shared; :func:`embed_scene` is built from them."""

from .embed import embed_scene

__all__ = ["embed_scene"]
