"""A rollout in flight as a running controller shows it (SPEC §9, §12): while a
3-instance service is replaced two machines at a time (batches of 2 and 1), the API puts
each instance in its batch — in machine-name order, as the journal planned them — with the
batches before the current one ready, and the metrics count what is replaced."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable

import pytest

from tests.controller.support import Controller, Remote, next_address
from tests.support import http_service

pytestmark = pytest.mark.slow

MACHINES = ("m1", "m2", "m3")


def files(message: str, addresses: dict[str, str]) -> dict[str, str]:
    machines = "".join(
        f"  {m}: {{deployment: {{targetEnv: local, address: {a}}}}}\n" for m, a in addresses.items()
    )
    return {
        "reconciler.yaml": (
            "deployments:\n  web:\n    models: [models.yaml]\n    branch: main\n    interval: 1s\n"
        ),
        "models.yaml": (
            f"machines:\n{machines}"
            "packages:\n  hello: {src: hello}\n"
            "services:\n  hello:\n    package: hello\n    type: process\n"
            "    command: bin/hello\n    port: auto\n"
            "    healthCheck: {http: /, timeout: 20s}\n"
            "    rollout: {maxUnavailable: 2, minReady: 3s}\n"
            f"distribution:\n  hello: [{', '.join(MACHINES)}]\n"
        ),
        "hello/bin/hello": http_service(repr(message)),
    }


def test_each_instance_shows_its_batch_while_a_rollout_runs(
    remote: Remote, start: Callable[..., Controller]
) -> None:
    addresses = {m: next_address() for m in MACHINES}
    remote.push(files("v1", addresses), "v1")
    c = start(remote.url, "--observe-interval", "0.5")
    c.wait("v1 applied", lambda: c.conditions()["Ready"]["status"] == "True")

    remote.push(files("v2", addresses), "v2")
    seen: list[dict[str, tuple[int, int, str]]] = []

    def second_batch() -> bool:
        shown = _rollout(c)
        if shown and shown not in seen:
            seen.append(shown)
        return any(s["hello@m3"][2] == "replacing" for s in seen)

    c.wait("the second batch replacing", second_batch)
    during = next(s for s in seen if s["hello@m3"][2] == "replacing")
    assert during == {
        "hello@m1": (1, 2, "ready"),
        "hello@m2": (1, 2, "ready"),
        "hello@m3": (2, 2, "replacing"),
    }
    metrics = _get(f"http://127.0.0.1:{c.port}/metrics")
    assert _metric(metrics, "reconciler_rollout_instances_to_replace") == 3.0
    assert _metric(metrics, "reconciler_rollout_instances_replaced") in (2.0, 3.0)


def _rollout(c: Controller) -> dict[str, tuple[int, int, str]]:
    doc = json.loads(_get(f"http://127.0.0.1:{c.port}/api/deployments/web"))
    return {
        i["key"]: (i["rollout"]["batch"], i["rollout"]["batches"], i["rollout"]["phase"])
        for i in doc.get("instances", [])
        if i.get("rollout")
    }


def _metric(text: str, name: str) -> float:
    found = re.search(rf'^{name}{{deployment="web"}} (\S+)$', text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def _get(url: str) -> str:
    with _opener.open(url, timeout=5) as reply:
        return str(reply.read().decode())
