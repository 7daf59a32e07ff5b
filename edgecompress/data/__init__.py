"""Data: readers (IDX, npz, random), the in-memory data set, and disjoint splits."""

from edgecompress.data.dataset import Dataset, Splits, as_float
from edgecompress.data.readers import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    load_npz,
    read_idx,
    resolve_data,
)
from edgecompress.data.splits import limit, load_splits

__all__ = ["DEBIAN_FASHION_MNIST", "FASHION_MNIST_CLASSES", "Dataset", "Splits", "as_float", "limit", "load_fashion_mnist",
           "load_npz", "load_splits", "read_idx", "resolve_data"]
