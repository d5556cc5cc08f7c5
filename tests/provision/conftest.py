"""Fixtures for the provisioners: a moto EC2 emulator as a real HTTP server on loopback,
the AWS environment pointing at it, desired machines, and a provisioning recorder."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.desired.state import DesiredMachine
from reconciler.models.schema import SshSettings
from reconciler.state.provisioning import SqliteRecorder
from tests.support import free_port

REGION = "us-east-1"


def desired_machine(
    name: str,
    target_env: str,
    address: str | None = None,
    provider: dict[str, Any] | None = None,
    ssh: SshSettings | None = None,
    state_dir: str | None = None,
) -> DesiredMachine:
    return DesiredMachine(
        name=name,
        target_env=target_env,
        address=address,
        ssh=ssh,
        state_dir=state_dir,
        max_parallel=4,
        compression="auto",
        profile=(),
        keys={},
        properties={},
        provider=provider or {},
        closure=(),
    )


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's EC2 emulator, a real HTTP server on 127.0.0.1 (a thread of this process)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_environment(url: str, specific: bool = False) -> dict[str, str]:
    """Fake credentials, the emulator as endpoint, and nothing read from ~/.aws."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env["AWS_ENDPOINT_URL_EC2" if specific else "AWS_ENDPOINT_URL"] = url
    return env


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The AWS environment of this test, against an emulator reset to empty."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in aws_environment(moto_url).items():
        monkeypatch.setenv(key, value)
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    return moto_url


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[SqliteRecorder]:
    rec = SqliteRecorder.open(tmp_path / "state.db", "test")
    try:
        yield rec
    finally:
        rec.close()
