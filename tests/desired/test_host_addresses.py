"""Local addresses are host-wide (SPEC §12, issue 13 item 13): a second state DB on the
host never hands out an address another state claimed or another process listens on.
Real files for the state DBs and the registry, real sockets."""

from __future__ import annotations

import fcntl
import json
import socket
from pathlib import Path

import pytest

from reconciler.desired.compile import compile_deployment
from reconciler.desired.host_addresses import claim, listening_on_loopback, taken_on_host
from tests.helpers import loaded

MODEL = {
    "machines": {"a": {}, "b": {}},
    "packages": {"p": {"src": "p"}},
    "services": {"s": {"package": "p", "type": "package"}},
    "distribution": {"s": ["a", "b"]},
}


def addresses(state: Path, registry: Path, recorded: dict[str, str] | None = None) -> list[str]:
    """What compiling MODEL against `state` hands machines a and b."""
    desired = compile_deployment(loaded(MODEL), recorded or {}, taken_on_host(state, registry))
    return [desired.machines[m].address or "" for m in ("a", "b")]


@pytest.fixture
def states(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two state DB files (the demo's and the tests') and a registry folder."""
    one, two = tmp_path / "demo" / "state.db", tmp_path / "tests" / "state.db"
    for path in (one, two):
        path.parent.mkdir()
        path.write_bytes(b"")
    return one, two, tmp_path / "registry"


def test_a_second_state_skips_the_addresses_the_first_claimed(
    states: tuple[Path, Path, Path],
) -> None:
    demo, tests, registry = states
    first = addresses(demo, registry)
    recorded = {"local-address/test/a": first[0], "local-address/test/b": first[1]}
    assert claim(demo, "test", recorded, registry, held={}) == []
    second = addresses(tests, registry)
    assert set(first).isdisjoint(second), (first, second)
    assert addresses(demo, registry, recorded) == first  # its own claims do not move it


def test_an_address_another_process_listens_on_is_skipped(
    states: tuple[Path, Path, Path],
) -> None:
    demo, _, registry = states
    free = addresses(demo, registry)
    with socket.socket() as sock:  # a process of the host (this one) takes machine a's
        sock.bind((free[0], 0))
        sock.listen()
        assert free[0] in listening_on_loopback()
        assert free[0] in taken_on_host(demo, registry)
        now = addresses(demo, registry)
    assert free[0] not in now, (free, now)
    assert addresses(demo, registry) == free  # given back once nothing listens


def test_a_claim_another_live_state_holds_is_refused_and_a_stale_one_replaced(
    states: tuple[Path, Path, Path],
) -> None:
    demo, tests, registry = states
    key = "local-address/test/a"
    assert claim(demo, "test", {key: "127.0.0.77"}, registry, held={}) == []
    assert claim(tests, "test", {key: "127.0.0.77"}, registry, held={}) == [key]  # concurrent
    demo.unlink()  # the demo's state is gone: its claim is stale
    assert "127.0.0.77" not in taken_on_host(tests, registry)
    assert claim(tests, "test", {key: "127.0.0.77"}, registry, held={}) == []
    entry = json.loads((registry / "local-addresses" / "127.0.0.77").read_text())
    assert entry == {"state": str(tests.resolve()), "key": key}


def test_addresses_a_deployment_no_longer_has_are_given_back(
    states: tuple[Path, Path, Path],
) -> None:
    demo, tests, registry = states
    both = {"local-address/test/a": "127.0.0.80", "local-address/test/b": "127.0.0.81"}
    claim(demo, "test", both, registry, held={})
    claim(demo, "other", {"local-address/other/a": "127.0.0.82"}, registry, held={})
    assert {"127.0.0.80", "127.0.0.81", "127.0.0.82"} <= taken_on_host(tests, registry)
    claim(demo, "test", {"local-address/test/a": "127.0.0.80"}, registry, held=both)
    taken = taken_on_host(tests, registry)
    assert "127.0.0.81" not in taken
    assert {"127.0.0.80", "127.0.0.82"} <= taken


def claimed_files(registry: Path) -> list[str]:
    return sorted(p.name for p in (registry / "local-addresses").iterdir() if p.name[0] != ".")


def test_claims_of_a_state_that_is_gone_are_swept_by_the_next_reader(
    states: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Else every first apply on the host reads every claim ever made (thousands, after
    many test runs), however few states still live."""
    demo, tests, registry = states
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    claim(demo, "test", {"local-address/test/a": "127.0.0.90"}, registry, held={})
    claim(other, "test", {"local-address/test/a": "127.0.0.91"}, registry, held={})
    demo.unlink()
    assert claimed_files(registry) == ["127.0.0.90", "127.0.0.91"]
    taken = taken_on_host(tests, registry)
    assert "127.0.0.91" in taken and "127.0.0.90" not in taken
    assert claimed_files(registry) == ["127.0.0.91"]


def test_a_reader_does_not_wait_for_a_claim_in_progress_nor_sweep_under_it(
    states: tuple[Path, Path, Path],
) -> None:
    demo, tests, registry = states
    claim(demo, "test", {"local-address/test/a": "127.0.0.92"}, registry, held={})
    demo.unlink()
    with open(registry / "local-addresses" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as `claim` holds it
        assert "127.0.0.92" not in taken_on_host(tests, registry)
        assert claimed_files(registry) == ["127.0.0.92"]
    taken_on_host(tests, registry)
    assert claimed_files(registry) == []
