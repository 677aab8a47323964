"""segcompile: compile and quantize semantic segmentation networks for embedded boards."""

__version__ = "0.1.0"
