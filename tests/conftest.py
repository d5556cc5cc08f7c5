from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Shared, noisy machines: judge properties, never speed.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("default")

# A real PostgreSQL server for the second state backend (tests/postgres.py), and SSH test
# hosts (real sshd in network namespaces: tests/testhosts.py)
from tests.postgres import postgres_db, postgres_server, state_location  # noqa: E402, F401
from tests.testhosts import ssh_hosts, ssh_hosts_factory, ssh_network_factory  # noqa: E402, F401


@pytest.fixture(autouse=True)
def host_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own host-wide address registry (desired/host_addresses.py): the
    state DBs of earlier tests must not push its machines to other addresses."""
    registry = tmp_path / "host-registry"
    monkeypatch.setenv("RECONCILER_HOST_REGISTRY", str(registry))
    return registry
