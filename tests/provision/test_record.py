"""The provisioning record: a token committed before any provider call, progress merged
into the detail, and nothing left after forget."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.provision import ProvisionError
from reconciler.state.provisioning import SqliteRecorder


def test_the_token_is_committed_and_stable(tmp_path: Path, recorder: SqliteRecorder) -> None:
    token = recorder.token("m1", "ec2")
    # another connection sees it at once: it is on disk before the call it guards
    with sqlite3.connect(tmp_path / "state.db") as other:
        row = other.execute(
            "SELECT provider, token, state, provider_id FROM provisioning "
            "WHERE deployment = 'test' AND machine = 'm1'"
        ).fetchone()
    assert row == ("ec2", token, "planned", None)
    assert recorder.token("m1", "ec2") == token
    assert recorder.token("m2", "ec2") != token


def test_steps_merge_detail_and_keep_the_provider_id(recorder: SqliteRecorder) -> None:
    recorder.token("m1", "ec2")
    recorder.step("m1", "creating", region="us-east-1")
    recorder.step("m1", "pending", provider_id="us-east-1/i-1")
    recorder.step("m1", "running", privateIp="10.0.0.1", hostKey=None)
    record = recorder.get("m1")
    assert record is not None
    assert (record.state, record.provider_id) == ("running", "us-east-1/i-1")
    assert record.detail == {"region": "us-east-1", "privateIp": "10.0.0.1"}
    assert recorder.detail("m1") == record.detail
    assert list(recorder.all()) == ["m1"]


def test_a_step_without_a_record_and_forget_leave_nothing(recorder: SqliteRecorder) -> None:
    recorder.step("ghost", "destroying")
    assert recorder.get("ghost") is None
    assert recorder.detail("ghost") == {}
    recorder.token("m1", "container")
    recorder.forget("m1")
    assert recorder.all() == {}


def test_another_provider_for_a_made_machine_is_refused(recorder: SqliteRecorder) -> None:
    recorder.token("m1", "ec2")
    recorder.token("m1", "container")  # never created: simply replaced
    recorder.step("m1", "running", provider_id="rc-0123456789")
    with pytest.raises(ProvisionError, match="destroy the old one first"):
        recorder.token("m1", "ec2")


def test_recorders_are_per_deployment(tmp_path: Path, recorder: SqliteRecorder) -> None:
    other = SqliteRecorder.open(tmp_path / "state.db", "other")
    try:
        assert other.token("m1", "ec2") != recorder.token("m1", "ec2")
        other.forget("m1")
        assert recorder.get("m1") is not None
    finally:
        other.close()
