"""Evaluation and analysis utilities (numpy only; never imports training code)."""
