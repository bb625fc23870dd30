"""
Hypothesis settings for the whole suite, loaded when the `tests` package is imported.

Both runners import the package before any test module (pytest through
conftest.py, trial through ``tests.test_x``), so every ``@settings`` in the
suite starts from the profile chosen here.

* ``ci`` (the default): ``derandomize=True`` — every run draws the same
  examples, so a property that passes in CI passes on every machine and a
  failure is reproducible by simply running the test again; no example
  database (nothing written to disk); no deadline (the machine is shared and
  its timing is not what a property tests).
* ``dev``: random examples each run and the local example database, to
  explore further while working on a codec:
  ``HYPOTHESIS_PROFILE=dev .venv/bin/python -m pytest tests/test_properties_pg_wire.py``.
* ``thorough``: like ``dev`` with at least 1000 examples per property (the
  codec properties ask for ``examples(n)``, which is n or the profile's count,
  whichever is larger).

``HYPOTHESIS_PROFILE`` picks one; pytest's ``--hypothesis-profile`` works too.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", derandomize=False, **_COMMON)
settings.register_profile("thorough", derandomize=False, max_examples=1000, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "").strip() or "ci"
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """`n` examples, or more when the loaded profile asks for more (``thorough``)."""
    return max(n, settings.default.max_examples)
