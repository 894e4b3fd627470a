"""Names of the shifted (out-of-distribution) evaluation domains.

This module depends on nothing, so that the data loaders and the analysis (which must not
import the data loaders) share one constant.
"""

from __future__ import annotations

SHIFT_DOMAINS = ("tweets", "amazon", "nyt")
