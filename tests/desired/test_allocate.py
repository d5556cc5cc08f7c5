"""Allocated values are kept once recorded; new ones take the lowest free value."""

from __future__ import annotations

import pytest

from reconciler.desired.allocate import (
    AllocationError,
    allocate_container_addresses,
    allocate_local_addresses,
    allocate_ports,
)
from tests.helpers import chain_model, compiled


def test_local_addresses_start_at_127_0_0_10_in_name_order() -> None:
    got = allocate_local_addresses("d", ["web", "db"], {})
    assert got == {"local-address/d/db": "127.0.0.10", "local-address/d/web": "127.0.0.11"}


def test_recorded_local_addresses_are_kept_and_new_ones_fill_gaps() -> None:
    # another deployment's machine of the same name is another machine: it keeps .12
    recorded = {"local-address/d/web": "127.0.0.10", "local-address/other/web": "127.0.0.12"}
    got = allocate_local_addresses("d", ["web", "api", "zz"], recorded)
    assert got == {
        "local-address/d/web": "127.0.0.10",
        "local-address/d/api": "127.0.0.11",
        "local-address/d/zz": "127.0.0.13",
    }


def test_container_addresses_skip_the_bridge_and_are_kept() -> None:
    got = allocate_container_addresses("d", ["b", "a"], {})
    assert got["container-address/d/a"] == "10.213.0.2"
    assert got["container-address/d/b"] == "10.213.0.3"
    again = allocate_container_addresses(
        "d", ["b", "c"], {**got, "container-subnet": "10.213.0.0/16"}
    )
    assert again["container-address/d/b"] == "10.213.0.3"
    assert again["container-address/d/c"] == "10.213.0.4"


def test_explicit_ports_win_over_recorded_auto_ports() -> None:
    wanted = {
        "a@m": ("m", "auto", (8000, 8010)),
        "b@m": ("m", 8000, None),
        "c@m": ("m", "auto", (8000, 8010)),
    }
    got = allocate_ports("d", wanted, {"port/d/a@m": "8000", "port/d/c@m": "8005"})
    assert got == {"b@m": 8000, "c@m": 8005, "a@m": 8001}


def test_ports_on_different_machines_do_not_collide() -> None:
    wanted = {"a@m1": ("m1", "auto", None), "a@m2": ("m2", "auto", None)}
    assert allocate_ports("d", wanted, {}) == {"a@m1": 8000, "a@m2": 8000}


def test_a_full_port_range_is_an_allocation_error() -> None:
    wanted = {"a@m": ("m", "auto", (9000, 9000)), "b@m": ("m", "auto", (9000, 9000))}
    with pytest.raises(AllocationError) as err:
        allocate_ports("d", wanted, {})
    assert err.value.key == "b@m"


def test_auto_ports_stay_put_when_a_service_is_added_before_them() -> None:
    first = compiled(chain_model(length=2, machines=1))
    model = chain_model(length=2, machines=1)
    model["services"]["a-new"] = {"package": "p0", "command": "bin/x", "port": "auto"}
    model["distribution"]["a-new"] = ["m0"]
    second = compiled(model, allocations=first.allocations)
    assert second.instances["s0@m0"].port == first.instances["s0@m0"].port
    assert second.instances["s1@m0"].port == first.instances["s1@m0"].port
    assert second.instances["a-new@m0"].port not in (8000, 8001)
