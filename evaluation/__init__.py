"""Evaluation: retrieval metrics (numpy only) and reference-parity checks.

Importing this package is torch-free.
"""
from evaluation.metrics import (
    METRIC_KEYS,
    MetricsError,
    compute_metrics,
    format_metrics_table,
    retrieval_metrics,
)

__all__ = ["METRIC_KEYS", "MetricsError", "compute_metrics", "format_metrics_table", "retrieval_metrics"]
