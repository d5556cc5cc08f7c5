"""Every benchmark's --quick mode runs to its end and prints its report, so that none of them
rots while the code it measures changes (tiny sizes, one run each; bench/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import testhosts as th

REPO_DIR = Path(__file__).resolve().parents[2]


def run_quick(name: str) -> str:
    """`python bench/NAME.py --quick` from the repository root: its report (stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    done = subprocess.run(
        [sys.executable, f"bench/{name}.py", "--quick"],
        cwd=REPO_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{name}.py --quick exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def assert_report(name: str, report: str, *rows: str) -> None:
    """The section RESULTS.md would get: its heading, what was measured, a table, the rows."""
    assert f"## {name}\n" in report
    assert "Measured: reconciler at commit" in report
    assert "|---" in report
    for row in rows:
        assert row in report, f"{row!r} missing from the {name} report:\n{report}"


def require_hosts() -> None:
    try:
        th.check_environment()
    except th.HostsUnavailableError as exc:
        th._unavailable(str(exc))


@pytest.mark.slow
def test_plan_quick_times_plan_against_the_c_loader() -> None:
    report = run_quick("plan")
    assert_report("plan", report, "| ssh | 20×5 |", "| local | 40×5 |", "Fixed overhead:")


@pytest.mark.slow
def test_activation_quick_measures_both_layouts() -> None:
    report = run_quick("activation")
    assert_report("activation", report, "| parallel, 50 ms | 3 × 10 |", "| serial, 50 ms |")
    assert "activation window ≤ 1.3 × critical path" in report


@pytest.mark.slow
def test_latency_quick_measures_every_trigger_and_the_no_op_poll() -> None:
    report = run_quick("latency")
    assert_report("latency", report, "| watch |", "| webhook |", "| polling |")
    assert "| local work tree |" in report and "| git daemon remote |" in report


@pytest.mark.slow
def test_provision_quick_measures_ec2_against_moto() -> None:
    report = run_quick("provision")
    assert_report("provision", report, "| 4 ec2 | 0 ms | 1 (one at a time) |")
    assert "| 2 container |" in report or "Containers: not measured" in report


@pytest.mark.slow
@pytest.mark.hosts
def test_fanout_quick_deploys_to_test_hosts_and_names_a_missing_peer() -> None:
    require_hosts()
    report = run_quick("fanout")
    assert_report("fanout", report, "| reconciler |")
    assert "| ansible, lean |" in report or "ansible-playbook is not installed" in report


@pytest.mark.slow
@pytest.mark.hosts
def test_transfer_quick_compares_with_its_peers() -> None:
    require_hosts()
    report = run_quick("transfer")
    assert_report("transfer", report, "| auto | h0 | zstd |", "| rsync -a |", "### Goals")
    assert "| nix-copy-closure |" in report or "Nix: not measured" in report


@pytest.mark.slow
def test_rollout_quick_keeps_the_guarantee_and_times_failover() -> None:
    report = run_quick("rollout")
    assert_report("rollout", report, "| 3 | 1 | 3 |", "| 10 | 25% | 4 |")
    assert "**broken**" not in report  # the fewest answering never below the guarantee
    assert "| answering elsewhere |" in report or "Failover: not measured" in report


@pytest.mark.slow
def test_scale_quick_converges_generated_deployments_under_one_controller() -> None:
    report = run_quick("scale")
    assert_report("scale", report, "| 5 | SQLite | 1 |", "Goals (issue 11)")
