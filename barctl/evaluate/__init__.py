"""Evaluation: scoring models on domain datasets, routing shares, 95% intervals, gates, recorded results."""
