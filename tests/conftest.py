"""
pytest glue.  Tests are trial TestCases (so `trial tests` works too) and
pytest-twisted runs the reactor for them.

Postgres clusters: `tests.pgcluster.PgCluster().start()` or the process-wide
`tests.pgcluster.shared_cluster(key)`.  Every cluster the test process
started is destroyed when the session ends, whether tests passed or failed
(and, failing that, at interpreter exit); so is every real Vaxine node
(tests.vaxine_helpers).  The `pg_cluster` fixture offers
the shared cluster to plain pytest-style tests.
"""

import pytest

from tests import pgcluster, vaxine_helpers


@pytest.fixture(scope="session")
def pg_cluster():
    return pgcluster.shared_cluster("pytest-session")


def pytest_sessionfinish(session, exitstatus):
    pgcluster.destroy_all()
    vaxine_helpers.destroy_all()
