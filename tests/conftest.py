from hypothesis import HealthCheck, settings

# Shared, noisy machines: judge properties, never speed.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("default")
