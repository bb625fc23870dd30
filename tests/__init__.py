"""
Electric's test suite (trial TestCases, also run by pytest).

Importing the package loads the suite's Hypothesis profile
(`tests.hypothesis_profiles`): pytest and trial both import it before any
test module.  Scripts that only borrow helpers (``python -m
tests.pgcluster`` from `make start_dev_env`, the benchmarks) may run
without Hypothesis installed, hence the guard.
"""

try:
    from tests import hypothesis_profiles  # noqa: F401
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass
