"""The status page of a running controller (`reconciler run`) in headless Chromium: the
documents it serves are the controller's own, not crafted ones, and its picture must
still draw every instance it applied, linked to its log."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.controller.support import Controller, Remote
from tests.controller.test_page_browser import browse, chromium
from tests.controller.test_page_picture import Elements

pytestmark = pytest.mark.slow


def test_the_page_of_a_running_controller(
    remote: Remote, start: Callable[..., Controller], tmp_path: Path
) -> None:
    binary = chromium()
    c = start(remote.url)
    url = f"http://127.0.0.1:{c.port}"
    c.wait("Ready", lambda: c.conditions()["Ready"]["status"] == "True")
    c.wait("the page to say so", lambda: "Ready" in _get(url + "/api/deployments/web"))
    served = json.loads(_get(url + "/api/deployments/web"))
    policy = _policy(url + "/")
    assert "default-src 'none'" in policy  # nothing is fetched that the page names
    assert "script-src" not in policy and "http" not in policy and "*" not in policy

    dom = browse(binary, url + "/", tmp_path / "page", "--dump-dom")
    found = Elements(dom.stdout)
    assert "Content Security Policy" not in dom.stderr, dom.stderr[-2000:]
    assert len(found.having("svg", "picture")) == 1
    nodes = found.having("a", "node")
    assert [a["data-key"] for a in nodes] == [i["key"] for i in served["instances"]] == ["hello@m1"]
    assert nodes[0]["href"] == "/api/deployments/web/instances/hello@m1/log"
    assert "t-good" in nodes[0]["class"].split()
    assert [g["data-machine"] for g in found.having("g", "machine")] == ["m1"]


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def _get(url: str) -> str:
    with _opener.open(url, timeout=5) as reply:
        return str(reply.read().decode())


def _policy(url: str) -> str:
    with _opener.open(url, timeout=5) as reply:
        return str(reply.headers["Content-Security-Policy"])
