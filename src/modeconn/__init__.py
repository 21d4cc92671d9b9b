"""modeconn: mode connectivity for any PyTorch model."""

__version__ = "0.1.0"
