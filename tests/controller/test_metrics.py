"""The metrics a person graphs: their exposition passes `promtool check metrics` with
every metric populated, and each says what a dashboard would read from it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.controller.metrics import Metrics

# What a user queries: the names of the samples, as PromQL sees them.
QUERIED = {
    "reconciler_reconciles_total",
    "reconciler_reconcile_duration_seconds_bucket",
    "reconciler_reconcile_failures_total",
    "reconciler_transferred_bytes_total",
    "reconciler_instances",
    "reconciler_last_applied_timestamp_seconds",
    "reconciler_reconcile_lag_seconds",
    "reconciler_attempts_total",
    "reconciler_machines",
    "reconciler_rollout_instances_replaced",
    "reconciler_rollout_instances_to_replace",
    "reconciler_rollout_progress_ratio",
}


def promtool(exposition: bytes) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        reason = "promtool is not installed (Debian package prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true forbids skipping")
        pytest.skip(reason)
    return subprocess.run(
        [tool, "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def populated() -> Metrics:
    """Every metric with a value, as after an apply with a rollout and a failed machine."""
    metrics = Metrics()
    metrics.reconciled("local", "applied", 12.5)
    metrics.reconciled("local", "failed", 0.4)
    metrics.transferred("local", 73_000)
    metrics.instances("local", {"active": 7, "dead": 1})
    metrics.machines("local", {"reachable": 2, "failed": 1})
    metrics.applied("local", 1_795_579_546.0, committed=1_795_579_500.0)
    metrics.attempted("local", "succeeded")
    metrics.attempted("local", "rolled_back")
    metrics.rollout("local", 2, 6)
    return metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_promtool_finds_nothing_wrong_with_every_metric_populated() -> None:
    metrics = populated()
    checked = promtool(metrics.render()[0])
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    assert {name for name, _ in samples(metrics)} >= QUERIED


def test_promtool_does_complain_about_a_bad_exposition() -> None:
    """So that its silence above means something."""
    checked = promtool(b"# HELP x_total Wrong.\n# TYPE x_total gauge\nx_total 1\n")
    assert checked.returncode != 0
    assert "_total" in checked.stdout + checked.stderr


def test_reconcile_lag_is_from_the_commit_to_its_apply() -> None:
    metrics = populated()
    assert value(metrics, "reconciler_reconcile_lag_seconds", deployment="local") == 46.0
    # A committer whose clock runs ahead of ours: no lag rather than a negative one.
    metrics.applied("local", 1_795_579_600.0, committed=1_795_579_660.0)
    assert value(metrics, "reconciler_reconcile_lag_seconds", deployment="local") == 0.0
    assert value(metrics, "reconciler_last_applied_timestamp_seconds", deployment="local") == (
        1_795_579_600.0
    )


def test_attempts_by_result_start_at_zero() -> None:
    metrics = Metrics()
    metrics.attempted("a", "rolled_back")
    metrics.attempted("a", "rolled_back")
    by_result = {
        result: value(metrics, "reconciler_attempts_total", deployment="a", result=result)
        for result in ("succeeded", "rolled_back", "stalled", "failed")
    }
    assert by_result == {"succeeded": 0.0, "rolled_back": 2.0, "stalled": 0.0, "failed": 0.0}


def test_machines_by_state_always_show_failed() -> None:
    metrics = Metrics()
    metrics.machines("a", {"reachable": 2, "unreachable": 1, "provisioning": 1})
    metrics.machines("a", {"reachable": 3})
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in samples(metrics).items()
        if name == "reconciler_machines"
    }
    assert states == {"reachable": 3.0, "unreachable": 0.0, "failed": 0.0}


def test_rollout_progress_goes_from_zero_to_one() -> None:
    metrics = Metrics()
    progress = []
    for replaced in range(5):
        metrics.rollout("a", replaced, 4)
        progress.append(value(metrics, "reconciler_rollout_progress_ratio", deployment="a"))
    assert progress == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert value(metrics, "reconciler_rollout_instances_to_replace", deployment="a") == 4.0
    metrics.rollout("a", 0, 0)  # nothing to replace: done
    assert value(metrics, "reconciler_rollout_progress_ratio", deployment="a") == 1.0
