"""Evaluation of models on domain datasets, and of how MoE models route their tokens."""

from barctl.evaluate.generate import generate, render_prompt
from barctl.evaluate.metrics import METRIC_COLUMNS, METRIC_FORMATS, METRICS, evaluate_domain
from barctl.evaluate.routing import routing_shares

__all__ = [
    "METRICS",
    "METRIC_COLUMNS",
    "METRIC_FORMATS",
    "evaluate_domain",
    "generate",
    "render_prompt",
    "routing_shares",
]
