from torchsmith.models.blocks import ConvLayer

__all__ = ["ConvLayer"]
