"""Data layer: datasets, loaders, splits and batching."""

from thinkrec.data.dataset import CATALOG_COLUMNS, DataFormatError, Dataset
from thinkrec.data.registry import DATASETS, FORMATS, NAMED_DATASETS, load_dataset, resolve_data_root

__all__ = [
    "CATALOG_COLUMNS",
    "DATASETS",
    "FORMATS",
    "NAMED_DATASETS",
    "DataFormatError",
    "Dataset",
    "load_dataset",
    "resolve_data_root",
]
