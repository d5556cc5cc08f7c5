"""Prometheus metrics of one controller, on a registry of its own (not the process-wide
default), so that tests can make as many controllers as they like.

    reconciler_reconciles_total{deployment,result}        passes that ended in `result`
    reconciler_reconcile_duration_seconds{deployment}     histogram of those passes
    reconciler_reconcile_failures_total{deployment}       failed, invalid or refused passes
    reconciler_transferred_bytes_total{deployment}        store bytes sent to machines
    reconciler_instances{deployment,state}                instances by observed state
    reconciler_last_applied_timestamp_seconds{deployment} when a generation was last applied
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# What generate_latest writes (with its default escaping) is the classic text format,
# which every Prometheus accepts; newer clients label it 1.0.0, which older ones refuse.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAILED_RESULTS = frozenset({"failed", "invalid", "refused"})
# A pass that finds nothing new takes well under a second; an apply, seconds to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._reconciles = Counter(
            "reconciler_reconciles",
            "Reconcile passes by result (applied, unchanged, failed, invalid, refused).",
            ["deployment", "result"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "How long reconcile passes took.",
            ["deployment"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._failures = Counter(
            "reconciler_reconcile_failures",
            "Reconcile passes that failed, found invalid models or refused a commit.",
            ["deployment"],
            registry=self.registry,
        )
        self._transferred = Counter(
            "reconciler_transferred_bytes",
            "Bytes of store paths sent to machines.",
            ["deployment"],
            registry=self.registry,
        )
        self._instances = Gauge(
            "reconciler_instances",
            "Service instances by observed state (active, dead, missing, drifted, unknown).",
            ["deployment", "state"],
            registry=self.registry,
        )
        self._applied = Gauge(
            "reconciler_last_applied_timestamp_seconds",
            "Unix time a generation of the deployment was last applied.",
            ["deployment"],
            registry=self.registry,
        )
        self._states: dict[str, set[str]] = {}  # the states last reported per deployment
        self._lock = threading.Lock()

    def reconciled(self, deployment: str, result: str, seconds: float) -> None:
        self._reconciles.labels(deployment, result).inc()
        self._duration.labels(deployment).observe(seconds)
        if result in FAILED_RESULTS:
            self._failures.labels(deployment).inc()

    def transferred(self, deployment: str, nbytes: int) -> None:
        self._transferred.labels(deployment).inc(nbytes)

    def instances(self, deployment: str, by_state: dict[str, int]) -> None:
        """Replace the deployment's counts: a state no longer reported disappears."""
        with self._lock:
            # Set the new values before removing the old ones, so a concurrent scrape
            # never sees a state that is still there missing.
            for state, count in by_state.items():
                self._instances.labels(deployment, state).set(count)
            for state in self._states.get(deployment, set()) - by_state.keys():
                self._instances.remove(deployment, state)
            self._states[deployment] = set(by_state)

    def applied(self, deployment: str, timestamp: float) -> None:
        self._applied.labels(deployment).set(timestamp)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE
