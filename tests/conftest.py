from hypothesis import HealthCheck, settings

# Shared, noisy machines: judge properties, never speed.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("default")

# SSH test hosts (real sshd in network namespaces): see tests/testhosts.py
from tests.testhosts import ssh_hosts, ssh_hosts_factory, ssh_network_factory  # noqa: E402, F401

# A real PostgreSQL server for the second state backend: see tests/postgres.py
from tests.postgres import postgres_db, postgres_server  # noqa: E402, F401
