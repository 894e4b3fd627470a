"""Experiments built on training: robustness sweeps, their results page, and the demo."""
