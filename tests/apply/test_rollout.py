"""Rolling replacement end to end (SPEC §9), on `local` machines: while real applies run, a
prober asks every instance for its body every 50 ms, and no more than `maxUnavailable` of
the instances that exist before and after an attempt are ever down at once — through a
successful upgrade, and through a broken version's failure and rollback."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import RECONCILER, clean_env, commit, kill_instances, make_repo, run_cli

pytestmark = pytest.mark.slow

MACHINES = ["m1", "m2", "m3", "m4"]
PERIOD = 0.05  # seconds between the prober's rounds
TIMEOUT = 1.0  # an instance that has not answered by then is down

# Answers "<version> <machine>"; its package's `mode` file can break it on some machines:
# `exit m3` exits at start, `sick m3 m4` answers 503, `die 1.0` dies after a second.
WEB = """\
#!/usr/bin/env python3
import http.server, os, sys, threading

package = os.environ["RECONCILER_PACKAGE"]
version = open(os.path.join(package, "version")).read().strip()
mode, *args = open(os.path.join(package, "mode")).read().split()
machine = os.environ["RECONCILER_MACHINE"]
if mode == "exit" and machine in args:
    sys.exit(3)
status = 503 if mode == "sick" and machine in args else 200


class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status)
        self.end_headers()
        self.wfile.write(f"{version} {machine}".encode())

    def log_message(self, *args):
        pass


if mode == "die":
    threading.Timer(float(args[0]), os._exit, [4]).start()
address = (os.environ["HOST"], int(os.environ["PORT"]))
http.server.ThreadingHTTPServer(address, Web).serve_forever()
"""


def machines_yaml() -> str:
    """Every machine `local`, at an address of its own that the tests of other folders
    (allocated 127.0.0.x, each with a host registry of its own) do not take meanwhile."""
    return "".join(
        f"  {m}: {{deployment: {{targetEnv: local, address: 127.0.81.{i}}}}}\n"
        for i, m in enumerate(MACHINES, start=1)
    )


def models(rollout: str, distribution: Mapping[str, list[str]]) -> str:
    """Each service runs WEB on the machines given, with the `rollout` given."""
    services = "".join(
        f"  {s}:\n    package: web\n    command: bin/web\n    port: auto\n"
        f"    healthCheck: {{http: /, timeout: 3s}}\n"
        + (f"    rollout: {rollout}\n" if rollout else "")
        for s in distribution
    )
    placed = "".join(f"  {s}: [{', '.join(ms)}]\n" for s, ms in distribution.items())
    return (
        f"machines:\n{machines_yaml()}packages:\n  web: {{src: pkgs/web}}\n"
        f"services:\n{services}distribution:\n{placed}"
    )


def version(name: str, mode: str = "ok") -> dict[str, str | None]:
    return {"pkgs/web/version": name, "pkgs/web/mode": mode}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    path = make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": "deployments:\n  roll:\n    models: [app.yaml]\n",
            "app.yaml": models("", {"web": MACHINES}),
            "pkgs/web/bin/web": WEB,
            **version("v1"),
        },
        programs=["pkgs/web/bin/web"],
    )
    try:
        yield path
    finally:
        kill_instances(path)


def apply(repo: Path) -> tuple[int, str, str]:
    done = run_cli("-d", "roll", "apply", "--yes", cwd=repo, timeout=180)
    return done.returncode, done.stdout, done.stderr


def deploy(repo: Path, rollout: str, distribution: Mapping[str, list[str]]) -> dict[str, str]:
    """Generation 1 of v1 with this rollout; returns each instance's URL."""
    commit(repo, {"app.yaml": models(rollout, distribution)}, "rollout")
    code, out, err = apply(repo)
    assert code == 0, err
    urls = dict(re.findall(r"^ +(\S+@\S+) +(http://\S+)$", out, re.MULTILINE))
    assert sorted(urls) == sorted(f"{s}@{m}" for s, ms in distribution.items() for m in ms)
    return urls


def body(url: str) -> str | None:
    """The instance's body if it answers 200 within TIMEOUT, else None (down)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        answer = conn.getresponse()
        return answer.read().decode() if answer.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Prober(threading.Thread):
    """Asks every instance at once, every PERIOD seconds, until stopped; each round is the
    body each instance answered (None: down)."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        super().__init__(daemon=True)
        self.urls = dict(urls)
        self.rounds: list[dict[str, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with ThreadPoolExecutor(len(self.urls)) as pool:
            while not self.stop.is_set():
                began = time.monotonic()
                bodies = pool.map(body, self.urls.values())
                self.rounds.append(dict(zip(self.urls, bodies, strict=True)))
                self.stop.wait(max(0.0, PERIOD - (time.monotonic() - began)))

    def most_down(self) -> int:
        return max(sum(b is None for b in r.values()) for r in self.rounds)

    def fewest_up(self) -> int:
        return min(sum(b is not None for b in r.values()) for r in self.rounds)

    def served(self, key: str) -> set[str]:
        """Every version the instance answered with."""
        return {b.split()[0] for r in self.rounds if (b := r[key]) is not None}


@contextlib.contextmanager
def probing(urls: Mapping[str, str]) -> Iterator[Prober]:
    prober = Prober(urls)
    prober.start()
    try:
        yield prober
    finally:
        prober.stop.set()
        prober.join()
    assert len(prober.rounds) > 10, "the prober hardly ran"


def serving(urls: Mapping[str, str]) -> dict[str, str | None]:
    return {key: body(url) for key, url in urls.items()}


def journal(repo: Path, step: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The last attempt's journal steps of kind `step`, in order: (action, machine, detail)."""
    with contextlib.closing(sqlite3.connect(repo / ".reconciler/state.db")) as db:
        rows = db.execute(
            "SELECT action, target, detail FROM journal WHERE step = ? AND attempt_id = "
            "(SELECT id FROM attempts ORDER BY started_at DESC LIMIT 1) ORDER BY id",
            [step],
        ).fetchall()
    return [(a, t, json.loads(d) if d else {}) for a, t, d in rows]


@pytest.mark.parametrize(
    ("rollout", "batches", "planned"),
    [
        (
            "{maxUnavailable: 1}",
            [["web@m1"], ["web@m2"], ["web@m3"], ["web@m4"]],
            "web: 4 instances in 4 batches of 1, minReady 0s",
        ),
        (
            '{maxUnavailable: "50%", minReady: 200ms}',
            [["web@m1", "web@m2"], ["web@m3", "web@m4"]],
            "web: 4 instances in 2 batches of 2, minReady 200ms",
        ),
    ],
)
def test_an_upgrade_keeps_all_but_max_unavailable_answering(
    repo: Path, rollout: str, batches: list[list[str]], planned: str
) -> None:
    urls = deploy(repo, rollout, {"web": MACHINES})
    commit(repo, version("v2"), "v2")
    with probing(urls) as prober:
        code, out, err = apply(repo)
    assert code == 0, err
    assert f"Rolling replacement:\n  {planned}\n" in out  # the plan apply shows
    size = len(batches[0])
    assert 1 <= prober.most_down() <= size  # the prober saw the restarts, never more at once
    assert serving(urls) == {k: f"v2 {k.split('@')[1]}" for k in urls}

    # progress on stderr and the journal: each batch, in machine-name order
    for number, batch in enumerate(batches, start=1):
        assert f"web: batch {number}/{len(batches)}: replacing {', '.join(batch)}" in err
    steps = [
        (action, d.get("batch") or d.get("instance"))
        for action, _, d in journal(repo, "transition")
        if action in ("rollout-batch", "deactivate", "activate")
    ]
    assert [n for a, n in steps if a == "rollout-batch"] == list(range(1, len(batches) + 1))
    assert len(steps) == sum(1 + 2 * len(b) for b in batches)
    for number, batch in enumerate(batches, start=1):  # all its stops, then all its starts
        at = steps.index(("rollout-batch", number)) + 1
        assert sorted(steps[at : at + len(batch)]) == [("deactivate", k) for k in batch]
        starts = steps[at + len(batch) : at + 2 * len(batch)]
        assert sorted(starts) == [("activate", k) for k in batch]


@pytest.mark.parametrize(
    ("rollout", "mode", "undone"),
    [
        # batches 1 and 2 replaced, batch 3 exits at start: three batches undone
        ("{maxUnavailable: 1}", "exit m3", [["web@m3"], ["web@m2"], ["web@m1"]]),
        # batch 1 replaced, batch 2 never passes its health check
        ("{maxUnavailable: 2}", "sick m3 m4", [["web@m3", "web@m4"], ["web@m1", "web@m2"]]),
    ],
)
def test_a_broken_version_rolls_back_keeping_all_but_max_unavailable_answering(
    repo: Path, rollout: str, mode: str, undone: list[list[str]]
) -> None:
    urls = deploy(repo, rollout, {"web": MACHINES})
    commit(repo, version("v2", mode), "broken v2")
    with probing(urls) as prober:
        code, _, err = apply(repo)
    assert code == 1, err
    assert "rolled back" in err.lower(), err
    size = len(undone[0])
    assert 1 <= prober.most_down() <= size  # the rollback included
    for key in ("web@m1", "web@m2"):  # the rollback undid batches that had succeeded
        assert prober.served(key) == {"v1", "v2"}, key
    assert serving(urls) == {k: f"v1 {k.split('@')[1]}" for k in urls}

    # batch by batch, in reverse: the old instances come back newest batch first
    restored = [d["subject"] for a, _, d in journal(repo, "rollback") if a == "activate"]
    assert [sorted(restored[i : i + size]) for i in range(0, len(restored), size)] == undone


def test_min_ready_catches_a_version_that_dies_after_passing_its_health_check(
    repo: Path,
) -> None:
    urls = deploy(repo, "{maxUnavailable: 1, minReady: 3s}", {"web": MACHINES})
    commit(repo, version("v2", "die 1.0"), "v2 dies after a second")
    plan = run_cli("-d", "roll", "plan", cwd=repo).stdout
    assert "web: 4 instances in 4 batches of 1, minReady 3s" in plan
    with probing(urls) as prober:
        code, _, err = apply(repo)
    assert code == 1, err
    assert "within minReady" in err, err
    assert prober.served("web@m1") == {"v1", "v2"}  # it did pass its health check
    assert prober.served("web@m2") == {"v1"}  # and the next batch never began
    assert prober.most_down() <= 1
    assert serving(urls) == {k: f"v1 {k.split('@')[1]}" for k in urls}


def test_a_stateless_service_that_moves_starts_on_its_new_machine_before_it_stops(
    repo: Path,
) -> None:
    old = deploy(repo, "", {"web": ["m1"]})
    commit(repo, {"app.yaml": models("", {"web": ["m2"]})}, "move")
    plan = json.loads(run_cli("-d", "roll", "plan", "--format", "json", cwd=repo).stdout)
    m2 = next(m["address"] for m in plan["machines"] if m["name"] == "m2")
    parts = urllib.parse.urlsplit(old["web@m1"])
    new = {"web@m2": f"http://{m2}:{parts.port}"}  # auto ports: the same on another address
    with probing({**old, **new}) as prober:
        code, out, err = apply(repo)
    assert code == 0, err
    assert f"web@m2 {new['web@m2']}" in " ".join(out.split())  # probed where it answers
    assert prober.fewest_up() >= 1  # one answered in every round
    assert prober.rounds[0]["web@m2"] is None  # it began where it was
    assert serving({**old, **new}) == {"web@m1": None, "web@m2": "v1 m2"}
    steps = [(a, d.get("instance")) for a, _, d in journal(repo, "transition")]
    assert steps.index(("activate", "web@m2")) < steps.index(("deactivate", "web@m1"))


def two_services(web_rollout: str, other: str, other_lines: str) -> str:
    """web, and `other` from its own package (a copy of web's), on every machine."""
    every = ", ".join(MACHINES)
    return f"""\
machines:
{machines_yaml()}packages:
  web: {{src: pkgs/web}}
  {other}: {{src: pkgs/{other}}}
services:
  web:
    package: web
    command: bin/web
    port: auto
    healthCheck: {{http: /, timeout: 3s}}
    rollout: {web_rollout}
  {other}:
    package: {other}
    command: bin/web
    port: auto
    healthCheck: {{http: /, timeout: 3s}}
{other_lines}distribution:
  web: [{every}]
  {other}: [{every}]
"""


def deploy_two(repo: Path, other: str, app: str) -> dict[str, str]:
    """Generation 1 of `app` (from two_services); returns each instance's URL."""
    copy = {f"pkgs/{other}/{p}": (repo / "pkgs/web" / p).read_text() for p in ("version", "mode")}
    commit(repo, {**copy, f"pkgs/{other}/bin/web": WEB, "app.yaml": app}, other)
    (repo / f"pkgs/{other}/bin/web").chmod(0o755)
    commit(repo, {}, "executable")
    code, out, err = apply(repo)
    assert code == 0, err
    return dict(re.findall(r"^ +(\S+@\S+) +(http://\S+)$", out, re.MULTILINE))


def test_dependents_roll_after_the_service_they_depend_on_by_their_own_rollout(
    repo: Path,
) -> None:
    """front dependsOn web: a new web changes front's identity only through web's digest."""
    front = "    dependsOn: [web]\n    rollout: {maxUnavailable: 1}\n"
    urls = deploy_two(repo, "front", two_services("{maxUnavailable: 2}", "front", front))
    assert len(urls) == 8, urls
    commit(repo, version("v2"), "web v2")
    with probing(urls) as prober:
        code, out, err = apply(repo)
    assert code == 0, err
    assert "web: 4 instances in 2 batches of 2" in out
    assert "front: 4 instances in 4 batches of 1" in out

    def most_down(service: str) -> int:
        keys = [k for k in urls if k.startswith(f"{service}@")]
        return max(sum(r[k] is None for k in keys) for r in prober.rounds)

    assert most_down("web") <= 2 and most_down("front") <= 1
    batches = [
        (d["service"], d["batch"])
        for action, _, d in journal(repo, "transition")
        if action == "rollout-batch"
    ]
    assert batches == [("web", 1), ("web", 2), *(("front", n) for n in range(1, 5))]
    assert serving(urls) == {
        k: f"{'v2' if k.startswith('web@') else 'v1'} {k.split('@')[1]}" for k in urls
    }


def test_a_failure_elsewhere_stops_a_rollout_before_its_next_batch(repo: Path) -> None:
    """solo and web are independent: when solo's new version fails, web's rollout (each
    batch held 2 s by minReady) begins no further batch — it is about to be undone."""
    solo = '    rollout: {maxUnavailable: "100%"}\n'
    deploy_two(repo, "solo", two_services("{maxUnavailable: 1, minReady: 2s}", "solo", solo))
    commit(repo, {**version("v2"), "pkgs/solo/mode": "exit m1"}, "web v2, solo broken")
    code, _, err = apply(repo)
    assert code == 1, err
    batches = [d["batch"] for a, _, d in journal(repo, "transition") if a == "rollout-batch"]
    assert batches == [1], batches


def test_an_interrupted_rollout_rolls_back_keeping_all_but_max_unavailable_answering(
    repo: Path,
) -> None:
    """SIGTERM in the middle of the second batch: the attempt undoes what it did, batch by
    batch, and the guarantee holds through it."""
    urls = deploy(repo, "{maxUnavailable: 1, minReady: 1s}", {"web": MACHINES})
    commit(repo, version("v2"), "v2")
    with probing(urls) as prober:
        proc = subprocess.Popen(
            [RECONCILER, "-d", "roll", "apply", "--yes"],
            cwd=repo, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (prober.rounds and prober.rounds[-1]["web@m2"] == "v2 m2"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert "Rolled back" in err, err
    assert prober.served("web@m3") == {"v1"}  # no batch began after the signal
    assert prober.most_down() <= 1
    assert serving(urls) == {k: f"v1 {k.split('@')[1]}" for k in urls}
