"""Prometheus metrics of one controller, on a registry of its own (not the process-wide
default), so that tests can make as many controllers as they like.

    reconciler_reconciles_total{deployment,result}        passes that ended in `result`
    reconciler_reconcile_duration_seconds{deployment}     histogram of those passes
    reconciler_reconcile_failures_total{deployment}       failed, invalid or refused passes
    reconciler_transferred_bytes_total{deployment}        store bytes sent to machines
    reconciler_instances{deployment,state}                instances by observed state
    reconciler_last_applied_timestamp_seconds{deployment} when a generation was last applied
    reconciler_reconcile_lag_seconds{deployment}          its commit's time → applied
    reconciler_attempts_total{deployment,result}          attempts: succeeded, rolled_back…
    reconciler_machines{deployment,state}                 machines: reachable, unreachable, failed
    reconciler_rollout_instances_replaced{deployment}     the current (or last) rollout:
    reconciler_rollout_instances_to_replace{deployment}     instances replaced, of how many,
    reconciler_rollout_progress_ratio{deployment}           and the fraction (1 when done)

What the controller calls: `reconciled` after every pass, `transferred` after an apply,
`applied` (with the commit's time) when a generation was recorded, `attempted` when an
attempt ends, `instances` and `machines` after every observation, `rollout` after every
batch of a rolling replacement.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# What generate_latest writes (with its default escaping) is the classic text format,
# which every Prometheus accepts; newer clients label it 1.0.0, which older ones refuse.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAILED_RESULTS = frozenset({"failed", "invalid", "refused"})
# Results of an attempt as `history` shows them; each starts at 0 so rate() sees the first.
ATTEMPT_RESULTS = ("succeeded", "rolled_back", "stalled", "failed")
# Machine states always exported (0 when none), so an alert on `failed` has a series.
MACHINE_STATES = ("reachable", "unreachable", "failed")
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
        self._lag = Gauge(
            "reconciler_reconcile_lag_seconds",
            "Seconds from the commit time of the last applied generation to its apply.",
            ["deployment"],
            registry=self.registry,
        )
        self._attempts = Counter(
            "reconciler_attempts",
            "Attempts (apply, rollback, self-heal, failover) by result.",
            ["deployment", "result"],
            registry=self.registry,
        )
        self._machines = Gauge(
            "reconciler_machines",
            "Machines by observed state (reachable, unreachable, failed).",
            ["deployment", "state"],
            registry=self.registry,
        )
        self._replaced = Gauge(
            "reconciler_rollout_instances_replaced",
            "Instances the current (or last) rollout has replaced so far.",
            ["deployment"],
            registry=self.registry,
        )
        self._to_replace = Gauge(
            "reconciler_rollout_instances_to_replace",
            "Instances the current (or last) rollout replaces in all.",
            ["deployment"],
            registry=self.registry,
        )
        self._progress = Gauge(
            "reconciler_rollout_progress_ratio",
            "Fraction of the current (or last) rollout done: 1 when finished.",
            ["deployment"],
            registry=self.registry,
        )
        # The label values last reported per deployment, for the replacing gauges.
        self._states: dict[str, set[str]] = {}
        self._machine_states: dict[str, set[str]] = {}
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
            _replace(self._instances, self._states, deployment, by_state)

    def machines(self, deployment: str, by_state: dict[str, int]) -> None:
        """Replace the deployment's machine counts; reachable, unreachable and failed are
        always there (0 when none), any other state only while reported."""
        counts = dict.fromkeys(MACHINE_STATES, 0) | by_state
        with self._lock:
            _replace(self._machines, self._machine_states, deployment, counts)

    def applied(self, deployment: str, timestamp: float, committed: float | None = None) -> None:
        """A generation was recorded at `timestamp`; `committed` is its commit's time
        (Unix seconds). A committer's clock ahead of ours counts as no lag."""
        self._applied.labels(deployment).set(timestamp)
        if committed is not None:
            self._lag.labels(deployment).set(max(0.0, timestamp - committed))

    def attempted(self, deployment: str, result: str) -> None:
        for known in ATTEMPT_RESULTS:
            self._attempts.labels(deployment, known)
        self._attempts.labels(deployment, result).inc()

    def rollout(self, deployment: str, replaced: int, to_replace: int) -> None:
        """Progress of the deployment's rollout; called with (0, n) when it starts and
        after each batch. Nothing to replace is a finished rollout."""
        self._replaced.labels(deployment).set(replaced)
        self._to_replace.labels(deployment).set(to_replace)
        self._progress.labels(deployment).set(replaced / to_replace if to_replace else 1.0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE


def _replace(
    gauge: Gauge, reported: dict[str, set[str]], deployment: str, counts: dict[str, int]
) -> None:
    """Set a deployment's counts by state; states it no longer reports disappear. The new
    values are set before the old ones go, so a concurrent scrape never misses a state
    that is still there. The caller holds the lock."""
    for state, count in counts.items():
        gauge.labels(deployment, state).set(count)
    for state in reported.get(deployment, set()) - counts.keys():
        gauge.remove(deployment, state)
    reported[deployment] = set(counts)
