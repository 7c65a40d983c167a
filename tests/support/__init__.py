"""What the tests, the benchmarks and ``make demo`` share: the real stack (moto S3, Funnel), an
Airflow home driven through its CLI, the TES spec checker, and the loopback HTTP servers (the
fault/personality proxy, the OIDC provider and gateway, the in-memory TES stub).

A package rather than loose modules on ``sys.path`` so that every user imports it the same way
(``from tests.support.stack import FunnelServer``) from the repository root. Plain Python: nothing
here imports pytest.
"""

from pathlib import Path

#: The checkout's root (where pyproject.toml is).
REPO_ROOT = Path(__file__).resolve().parents[2]
