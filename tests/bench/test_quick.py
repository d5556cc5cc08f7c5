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


def assert_report(name: str, report: str, *rows: str | tuple[str, ...]) -> None:
    """The section RESULTS.md would get: its heading, what was measured, a table, the rows
    (a tuple: one of them, as when a peer is measured or the report says why not)."""
    assert f"## {name}\n" in report
    assert "Measured: reconciler at commit" in report
    assert "|---" in report
    for row in rows:
        either = (row,) if isinstance(row, str) else row
        assert any(r in report for r in either), (
            f"{row!r} missing from the {name} report:\n{report}"
        )


def require_hosts() -> None:
    try:
        th.check_environment()
    except th.HostsUnavailableError as exc:
        th._unavailable(str(exc))


# what each benchmark's quick report must say
REPORTS: dict[str, list[str | tuple[str, ...]]] = {
    "plan": ["| ssh | 20×5 |", "| local | 40×5 |", "Fixed overhead:"],
    "activation": [
        "| parallel, 50 ms | 3 × 10 |",
        "| serial, 50 ms |",
        "activation window ≤ 1.3 × critical path",
    ],
    "latency": [
        "| watch |",
        "| webhook |",
        "| polling |",
        "| local work tree |",
        "| git daemon remote |",
    ],
    "provision": [
        "| 4 ec2 | 0 ms | 1 (one at a time) |",
        ("| 2 container |", "Containers: not measured"),
    ],
    "fanout": ["| reconciler |", ("| ansible, lean |", "ansible-playbook is not installed")],
    "transfer": [
        "| auto | h0 | zstd |",
        "| rsync -a |",
        "### Goals",
        ("| nix-copy-closure |", "Nix: not measured"),
    ],
    "rollout": [
        "| 3 | 1 | 3 |",
        "| 10 | 25% | 4 |",
        ("| answering elsewhere |", "Failover: not measured"),
    ],
    "scale": ["| 5 | SQLite | 1 |", "Goals (issue 11)"],
}
ON_HOSTS = {"fanout", "transfer"}  # they deploy to the SSH test hosts


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.hosts) if n in ON_HOSTS else n for n in REPORTS]
)
def test_quick_report(name: str) -> None:
    if name in ON_HOSTS:
        require_hosts()
    report = run_quick(name)
    assert_report(name, report, *REPORTS[name])
    assert "**broken**" not in report  # rollout's fewest answering never below the guarantee
