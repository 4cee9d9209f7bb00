"""SkySense where people already fine-tune: timm models (:mod:`.timm_models`) and TerraTorch
backbones (:mod:`.terratorch_backbones`). Each is imported on demand: neither library is a
dependency of the package."""
