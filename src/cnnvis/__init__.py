"""cnnvis: see what convolutional neural networks learn."""

__version__ = "0.1.0"

from cnnvis.errors import CnnvisError  # noqa: E402,F401
