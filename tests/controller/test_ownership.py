"""Controller replicas sharing one state (SPEC §11), on SQLite and on PostgreSQL: each
deployment is owned by one replica at a time, the deployments spread evenly over the live
replicas, a replica that stops renewing loses its deployments when their leases expire,
and what it would record after that is refused by the fencing token."""

from __future__ import annotations

import time

import pytest

from reconciler.controller.ownership import Ownership
from reconciler.options import Options
from reconciler.state import locks
from reconciler.state.db import open_db

NAMES = ["a", "b", "c", "d", "e"]
TTL = 1.5


def replica(state: str) -> Ownership:
    return Ownership(Options(state=str(state)), ttl=TTL)


def owned(*replicas: Ownership) -> list[set[str]]:
    return [{n for n in r.owned if r.owns(n)} for r in replicas]


def test_deployments_spread_over_live_replicas_and_move_when_one_dies(state_location: str) -> None:
    state = state_location
    first, second = replica(state), replica(state)
    first.sync(NAMES)
    assert owned(first) == [set(NAMES)]  # alone: it owns everything

    second.sync(NAMES)  # it joins: everything is owned, so it waits its turn
    first.sync(NAMES)  # the first gives back what is beyond its share
    second.sync(NAMES)
    mine, theirs = owned(first, second)
    assert mine.isdisjoint(theirs) and mine | theirs == set(NAMES)
    assert sorted([len(mine), len(theirs)]) == [2, 3]

    fence = first.owned[sorted(mine)[0]]
    time.sleep(TTL + 0.2)  # the first stops renewing, as if killed with kill -9
    claimed, _ = second.sync(NAMES)
    assert mine <= set(claimed) and owned(second) == [set(NAMES)]

    db = open_db(state, write=True)
    assert db is not None
    with pytest.raises(locks.LeaseLost, match="no longer holds it"):
        locks.fence(db, fence)  # an apply the first replica started records nothing
    now_owner = locks.current(db, fence.name)
    assert now_owner is not None and now_owner.token == fence.token + 1
    db.close()


def test_a_replica_that_stops_gives_its_deployments_back_at_once(state_location: str) -> None:
    state = state_location
    first, second = replica(state), replica(state)
    first.sync(NAMES)
    first.release_all()
    claimed, _ = second.sync(NAMES)
    assert sorted(claimed) == NAMES  # no waiting for the leases to expire


def test_a_deployment_being_applied_is_not_given_back(state_location: str) -> None:
    state = state_location
    first, second = replica(state), replica(state)
    first.sync(NAMES)
    second.sync(NAMES)
    first.sync(NAMES, busy=NAMES)  # every deployment has an apply in flight
    assert owned(first) == [set(NAMES)]
