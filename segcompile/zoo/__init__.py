"""Segmentation networks in plain torch (MobileNetV2 / RegNetX + DeepLabV3Lite / FPNLite / UNetLite),
the named model zoo, and a multiply-accumulate counter."""

from segcompile.zoo.macs import count_macs
from segcompile.zoo.network import SegmentationNet, build_network
from segcompile.zoo.registry import ZooEntry, build_model, entry_macs, get_entry, list_entries

__all__ = [
    "SegmentationNet",
    "ZooEntry",
    "build_model",
    "build_network",
    "count_macs",
    "entry_macs",
    "get_entry",
    "list_entries",
]
