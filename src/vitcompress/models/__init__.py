"""Model zoo, timm adapters and checkpoint I/O."""

from vitcompress.models.registry import input_spec_of, list_models, load_model

__all__ = ["input_spec_of", "list_models", "load_model"]
