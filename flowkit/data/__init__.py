"""Datasets: the :class:`DataSplits` container, file readers and preprocessing."""

from flowkit.data.base import BatchStream, ClassBalancedStream, DataMeta, DataSplits, resolve_data_dir
from flowkit.data.preprocess import build_preprocess, dequantize

__all__ = [
    "BatchStream",
    "ClassBalancedStream",
    "DataMeta",
    "DataSplits",
    "build_preprocess",
    "dequantize",
    "resolve_data_dir",
]
