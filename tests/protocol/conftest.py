"""Hypothesis settings for the protocol fuzz properties.

``fuzz`` (the default here and in CI) runs each property on 2,000 generated examples;
``HYPOTHESIS_PROFILE=quick`` runs 100 for a fast local loop, ``deep`` 50,000 for a long hunt.
"""

from __future__ import annotations

import os
from typing import TypedDict

from hypothesis import HealthCheck, settings


class _Common(TypedDict):
    """What every profile sets besides its number of examples."""

    deadline: None
    suppress_health_check: list[HealthCheck]


_COMMON: _Common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("fuzz", max_examples=2_000, **_COMMON)
settings.register_profile("quick", max_examples=100, **_COMMON)
settings.register_profile("deep", max_examples=50_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
