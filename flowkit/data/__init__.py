"""Datasets: the :class:`DataSplits` container, file readers and preprocessing."""

from flowkit.data.base import DataSplits, BatchStream, resolve_data_dir
from flowkit.data.preprocess import build_preprocess, dequantize

__all__ = ["BatchStream", "DataSplits", "build_preprocess", "dequantize", "resolve_data_dir"]
