"""`reconciler run`: the controller (SPEC §5). One level-triggered loop per deployment of
the models repository, woken by its interval (with jitter), by a commit in a watched
local repository, or by the webhook; an HTTP server for probes, metrics, the API and the
status page; one controller per state DB. SIGTERM settles the apply in flight, then
the controller exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.controller.evaluate import Evaluator
from reconciler.controller.failover import after_observation
from reconciler.controller.git import GitError, Heads, Signers, local_git_dir
from reconciler.controller.loop import DeploymentLoop, PassResult, now_iso
from reconciler.controller.observer import Rounds
from reconciler.controller.ownership import Ownership
from reconciler.controller.view import ControllerView
from reconciler.controller.zygote import Zygote
from reconciler.errors import UserError
from reconciler.models.source import is_remote, redact
from reconciler.options import Options

if TYPE_CHECKING:
    from reconciler.execute.observe import Observation
    from reconciler.state.rows import DeploymentRecord

JITTER = 0.1  # ±10 % on every interval, so many controllers do not poll in step
APPLIES_PER_CORE = 4


@dataclass(frozen=True)
class RunSettings:
    opts: Options
    listen: str = "127.0.0.1:8430"
    webhook_secret_file: Path | None = None
    api_token_file: Path | None = None
    signers: Signers = field(default_factory=Signers)
    known_hosts: Path | None = None
    commit_url: str | None = None
    once: bool = False
    notify: tuple[str, ...] = ()
    notify_secret_file: Path | None = None
    # an apply mostly waits (agents, health checks, transfers): about 0.2 CPU-s of its own
    max_parallel_applies: int = APPLIES_PER_CORE * (os.cpu_count() or 1)
    lease_seconds: float = 30.0  # a replica's hold on the deployments it owns
    observe_interval: float | None = None  # rounds of observation (None: the shortest interval)


def read_secret(path: Path | None, what: str) -> str | None:
    """A secret from a file, without the newline `kubectl create secret` leaves."""
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise UserError(f"{what} {path}: cannot read it: {e.strerror}") from None
    if not value:
        raise UserError(f"{what} {path}: the file is empty")
    return value


class Controller:
    def __init__(self, settings: RunSettings) -> None:
        from reconciler.controller.metrics import Metrics
        from reconciler.controller.notify import Notifier

        self.settings = settings
        secret = read_secret(settings.notify_secret_file, "--notify-secret-file")
        self.notifier = Notifier(list(settings.notify), secret=secret)
        self.opts = settings.opts
        self.loops: dict[str, DeploymentLoop] = {}
        self.applies = asyncio.Semaphore(settings.max_parallel_applies)
        self.ownership = Ownership(self.opts, settings.lease_seconds)
        self.stop = asyncio.Event()
        self.metrics = Metrics()
        self.view = ControllerView(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.config_head: str | None = None
        self.failed = False
        # shared by every deployment: one listing per repository, one parse per commit, a
        # warm process to fork applies from, observation rounds
        self.heads = Heads()
        self.evaluator = Evaluator(self.opts)
        self.zygote = Zygote()
        self.rounds = Rounds(self.opts)
        self.announced = asyncio.Event()  # a commit was announced (watcher, webhook)
        self.last_docs: dict[str, tuple[Any, dict[str, Any]]] = {}  # name → (what, doc)
        repo = settings.opts.repo
        self.remote = repo if is_remote(repo) else local_git_dir(repo)

    async def run(self) -> int:
        from reconciler.controller.http import HttpServer, HttpSettings

        self.loop = asyncio.get_running_loop()
        if self.settings.known_hosts:
            from reconciler.targets.ssh import KNOWN_HOSTS_ENV

            os.environ[KNOWN_HOSTS_ENV] = str(self.settings.known_hosts)
        await self.refresh_deployments()
        server = None
        if not self.settings.once:
            server = HttpServer(
                self.view,
                HttpSettings(
                    listen=self.settings.listen,
                    api_token=read_secret(self.settings.api_token_file, "--api-token-file"),
                    webhook_secret=read_secret(
                        self.settings.webhook_secret_file, "--webhook-secret-file"
                    ),
                    commit_url=self.settings.commit_url,
                ),
                self.metrics,
            )
            await server.start()
            host, port = server.address
            self.say(f"listening on http://{host}:{port}/")
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.shutdown)
        watcher = self.watch_local_repo()
        self.sync_ownership()
        try:
            if self.settings.once:
                await asyncio.gather(*(self.one_pass(d) for d in list(self.loops.values())))
                return 1 if self.failed else 0
            keeping = asyncio.create_task(self.keep_ownership())
            observing = asyncio.create_task(self.observe_rounds())
            await self.supervise()
            keeping.cancel()
            observing.cancel()
            return 0
        finally:
            await self.zygote.close()
            self.ownership.release_all()
            if watcher is not None:
                watcher.stop()
            if server is not None:
                await server.stop()
            await self.notifier.aclose()

    def shutdown(self) -> None:
        self.say("stopping: settling what is in flight")
        self.stop.set()
        for d in self.loops.values():
            d.terminate_child()
            d.poke()

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(f"{now_iso()} {text}", file=sys.stderr, flush=True)

    # --- deployments ------------------------------------------------------------------

    async def refresh_deployments(self) -> None:
        """Deployments as reconciler.yaml at the default branch's head names them; the
        loops whose branch moved are woken (the others are not: a commit costs what it
        changes)."""
        listing = await self.heads.listing(self.remote, max_age=0)
        moved: dict[str, list[DeploymentLoop]] = {}  # new head → the loops tracking it
        for d in self.loops.values():
            with contextlib.suppress(GitError):
                if (new := listing.head(self.remote, d.branch)) != d.head:
                    moved.setdefault(new, []).append(d)
        for new, loops in moved.items():  # those whose inputs changed go first
            changed = await asyncio.to_thread(self.evaluator.changed, new, [d.name for d in loops])
            for d in sorted(loops, key=lambda d: d.name not in changed):
                d.poke()
        head = listing.head(self.remote, None)
        if head == self.config_head:
            return
        config = await asyncio.to_thread(self.evaluator.config, head)
        self.config_head = head
        fallback = listing.default
        wanted = config.root.deployments
        if self.opts.deployment:
            if self.opts.deployment not in wanted:
                raise UserError(f"-d {self.opts.deployment}: no such deployment")
            wanted = {self.opts.deployment: wanted[self.opts.deployment]}
        for name, dep in wanted.items():
            loop = self.loops.get(name)
            settings = {
                "branch": dep.branch or fallback,
                "interval": dep.interval,
                "auto_apply": dep.autoApply,
                "self_heal": dep.selfHeal,
                "allow_rewind": dep.allowRewind,
                "failover_after": _failover_after(dep),
            }
            if loop is None:
                self.loops[name] = DeploymentLoop(
                    name=name,
                    opts=self.opts,
                    remote=self.remote,
                    signers=self.settings.signers,
                    applies=self.applies,
                    on_apply=self.reconciling,
                    heads=self.heads,
                    evaluator=self.evaluator,
                    zygote=self.zygote,
                    **settings,  # type: ignore[arg-type]
                )
            else:
                for key, value in settings.items():
                    setattr(loop, key, value)
        for gone in set(self.loops) - set(wanted):
            self.say(f"{gone}: no longer in reconciler.yaml; no longer reconciled")
            self.loops.pop(gone)

    async def supervise(self) -> None:
        tasks = {name: asyncio.create_task(self.forever(d)) for name, d in self.loops.items()}
        interval = min((d.interval for d in self.loops.values()), default=30.0)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakes(), interval)
            self.announced.clear()
            if self.stop.is_set():
                break
            try:
                await self.refresh_deployments()
            except (GitError, UserError) as e:
                self.say(f"cannot read reconciler.yaml: {e}")
            for name, d in self.loops.items():
                if name not in tasks:
                    tasks[name] = asyncio.create_task(self.forever(d))
            for name in set(tasks) - set(self.loops):
                tasks.pop(name).cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def forever(self, d: DeploymentLoop) -> None:
        while not self.stop.is_set():
            # cleared before the pass: a commit or SIGTERM arriving during it wakes the next
            d.wake.clear()
            d.in_pass = True
            try:
                await self.one_pass(d)
            except Exception as e:  # a bug must not end the loop: say it, retry next pass
                where = e.__traceback__
                while where is not None and where.tb_next is not None:
                    where = where.tb_next
                at = f" ({where.tb_frame.f_code.co_filename}:{where.tb_lineno})" if where else ""
                self.say(f"{d.name}: pass failed: {type(e).__name__}: {e}{at}")
            d.in_pass = False
            wait = d.interval * random.uniform(1 - JITTER, 1 + JITTER)
            if d.failures and d.backoff_until > time.monotonic():
                wait = min(wait, d.backoff_until - time.monotonic())
            d.next_poll = time.monotonic() + wait
            if self.stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(d.wake.wait(), wait)

    def sync_ownership(self) -> None:
        """Claim, renew and give back deployments (SPEC §11); a newly owned one is
        reconciled at once, and an apply for a lost one can record nothing more."""
        busy = [n for n, d in self.loops.items() if d.applying or d.in_pass]
        claimed, lost = self.ownership.sync(self.loops, busy)
        for name in claimed:
            self.say(f"{name}: owned by this replica ({self.ownership.id})")
            self.loops[name].poke()
        for name in lost:
            self.say(f"{name}: taken over by another replica")
        for name, d in self.loops.items():
            d.fence = self.ownership.fence(name)

    async def keep_ownership(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.settings.lease_seconds / 3)
            if not self.stop.is_set():
                try:
                    await asyncio.to_thread(self.sync_ownership)
                except UserError as e:
                    self.say(f"cannot renew ownership: {e}")

    async def one_pass(self, d: DeploymentLoop) -> None:
        if not self.ownership.owns(d.name):
            await asyncio.to_thread(self.show_owned_elsewhere, d)
            return
        was_stalled = d.stalled
        outcome = await d.reconcile()
        if outcome.result != "idle":
            self.report(d, outcome)
        if outcome.result in ("failed", "invalid", "refused"):
            self.failed = True
        # an idle pass, or a commit that changes nothing here, leaves observing to the
        # rounds (a commit of one deployment's file costs the others only this); anything
        # else is shown at once
        doc = self.view.deployment(d.name)
        quiet = outcome.result == "idle" or (outcome.result == "unchanged" and not was_stalled)
        if doc is not None and quiet:
            self.view.put(d.name, {**doc, "controller": d.info(doc.get("controller"))})
        elif not self.stop.is_set():
            await self.observe(d)

    async def wakes(self) -> None:
        """Until SIGTERM or an announced commit."""
        stopping = asyncio.create_task(self.stop.wait())
        announced = asyncio.create_task(self.announced.wait())
        try:
            await asyncio.wait((stopping, announced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            announced.cancel()

    async def observe_rounds(self) -> None:
        """Every deployment this replica owns, observed together on their own interval
        (controller/observer.py), not by each pass."""
        shortest = min((d.interval for d in self.loops.values()), default=30.0)
        every = self.settings.observe_interval or shortest
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), every * random.uniform(1 - JITTER, 1))
            owned = [d for n, d in self.loops.items() if self.ownership.owns(n) and d.passes]
            if self.stop.is_set() or not owned:
                continue
            try:
                seen = await self.rounds.observe([d.name for d in owned])
                for d in owned:
                    if not self.stop.is_set() and d.name in seen:
                        await self.observe(d, seen[d.name])
            except Exception as e:  # a bug must not end the rounds: say it, try next round
                self.say(f"observation round failed: {type(e).__name__}: {e}")

    def report(self, d: DeploymentLoop, outcome: PassResult) -> None:
        from reconciler.controller.notify import Event

        head = (d.head or "")[:12]
        self.metrics.reconciled(d.name, outcome.result, outcome.seconds)
        self.metrics.attempted(d.name, outcome.result)
        if outcome.transferred:
            self.metrics.transferred(d.name, outcome.transferred)
        if outcome.result == "applied":
            self.metrics.applied(d.name, time.time(), committed=outcome.committed)
        if outcome.result == "applied" and d.applied_for:
            self.notifier.send(Event(d.name, "failed-over", reason="Failover", commit=d.head,
                                     message=d.applied_for))  # fmt: skip
        if outcome.result == "failed":
            reason = d.stalled[0] if d.stalled else None
            self.notifier.send(
                Event(d.name, "failed", reason=reason, commit=d.head, message=outcome.message)
            )
        detail = f": {outcome.message.splitlines()[0]}" if outcome.message else ""
        self.say(f"{d.name}: {head} {outcome.result} in {outcome.seconds:.1f} s{detail}")

    async def observe(self, d: DeploymentLoop, seen: Observation | None = None) -> None:
        """Observe the machines (the view's status, self-heal's check), heal, and store
        the conditions with their transition times; `seen`: a round's observation (the
        state is written only when something changed since the last)."""
        from reconciler.execute.observe import nothing_json, observe_async, status_json
        from reconciler.state.db import open_db
        from reconciler.state.journal import rollout_progress
        from reconciler.state.rows import read_deployment

        # every read and write of the state here runs in a worker thread: a writer waits its
        # turn behind the applies' own writes, and the event loop must not wait with it
        db = await asyncio.to_thread(open_db, self.opts.state_location, False)
        try:
            if seen is not None or db is None:
                record = seen.record if seen else None
            else:
                record = await asyncio.to_thread(read_deployment, db, d.name)
            if db is None or record is None:
                doc = nothing_json(d.name)
            else:
                obs = seen or await observe_async(db, record, self.opts.state_root)
                drifted = [i.row.key for i in obs.instances if i.state in ("dead", "missing")]
                if d.self_heal and drifted and not d.child and await self.heal(d, drifted):
                    record = await asyncio.to_thread(read_deployment, db, d.name) or record
                    obs = await observe_async(db, record, self.opts.state_root)
                doc = status_json(obs)
                if d.applying:
                    progress = await asyncio.to_thread(rollout_progress, db, d.name)
                    self.show_rollouts(d, doc, progress)
                by_state: dict[str, int] = {}
                for i in obs.instances:
                    by_state[i.state] = by_state.get(i.state, 0) + 1
                self.metrics.instances(d.name, by_state)
                reachable = sum(m.reachable for m in obs.machines.values())
                self.metrics.machines(
                    d.name,
                    {"reachable": reachable, "unreachable": len(obs.machines) - reachable},
                )
                d.observed = obs
                for line in after_observation(self.opts, d, obs):
                    self.say(f"{d.name}: {line}")
        finally:
            if db is not None:
                db.close()
        what = (dict(doc), d.stalled, d.applying, d.head, d.failures)  # before keys are added
        last = self.last_docs.get(d.name)
        if seen is not None and last is not None and last[0] == what:
            self.view.put(d.name, {**last[1], "controller": d.info(last[1]["controller"])})
            return  # nothing changed since the last document: nothing to store
        doc["conditions"] = await self.store_conditions(d)
        doc["controller"] = await asyncio.to_thread(d.info)
        doc["owner"] = {"replica": self.ownership.id, "thisReplica": True}
        await asyncio.to_thread(self.share_status, d.name, doc)
        self.view.put(d.name, doc)
        self.last_docs[d.name] = (what, doc)

    def show_rollouts(
        self, d: DeploymentLoop, doc: dict[str, Any], progress: dict[str, dict[str, Any]]
    ) -> None:
        """A rollout in flight (SPEC §9), on each instance of the page and in the metrics:
        the batches before the current one are ready, the current one is replacing (or
        ready once done), the rest wait. Which batch an instance is in, the journal says."""
        replaced = to_replace = 0
        for p in progress.values():
            batch_of = {key: n for n, keys in enumerate(p["plan"], start=1) for key in keys}
            for n, keys in enumerate(p["plan"], start=1):
                to_replace += len(keys)
                replaced += len(keys) if n < p["batch"] or (n == p["batch"] and p["done"]) else 0
            for inst in doc["instances"]:
                if (batch := batch_of.get(inst["key"])) is None:
                    continue
                phase = "ready" if batch < p["batch"] else "waiting"
                if batch == p["batch"]:
                    phase = "ready" if p["done"] else "replacing"
                inst["rollout"] = {"batch": batch, "batches": p["batches"], "phase": phase}
        self.metrics.rollout(d.name, replaced, to_replace)

    def share_status(self, name: str, doc: dict[str, Any]) -> None:
        from reconciler.state.db import open_db
        from reconciler.state.deployments import store_status

        db = open_db(self.opts.state_location, write=True)
        assert db is not None
        try:
            store_status(db, name, {k: v for k, v in doc.items() if k != "owner"})
        finally:
            db.close()

    def show_owned_elsewhere(self, d: DeploymentLoop) -> None:
        """A deployment another replica owns: its owner's last document, and who that is."""
        from reconciler.execute.observe import nothing_json
        from reconciler.state import locks
        from reconciler.state.db import open_db
        from reconciler.state.deployments import stored_status

        db = open_db(self.opts.state_location, write=False)
        try:
            doc = (stored_status(db, d.name) if db else None) or nothing_json(d.name)
            lease = locks.current(db, locks.owner_lease(d.name)) if db else None
        finally:
            if db is not None:
                db.close()
        live = lease is not None and lease.live
        doc["owner"] = {"replica": lease.holder if live and lease else None, "thisReplica": False}
        d.passes += 1
        self.view.put(d.name, doc)

    async def heal(self, d: DeploymentLoop, keys: list[str]) -> bool:
        from reconciler.execute.attempt import attempt_lease
        from reconciler.execute.heal import heal
        from reconciler.state.db import open_db

        async with self.applies:
            db = open_db(self.opts.state_location, write=True)
            assert db is not None
            try:
                with attempt_lease(db, d.name, "self-heal"):
                    outcome = await heal(db, d.name, keys, self.opts.state_root)
            except UserError as e:  # an apply holds it: heal on a later pass
                self.say(f"{d.name}: self-heal waits: {e}")
                return False
            finally:
                db.close()
        healed = outcome.report.get("healed", [])
        if healed:
            self.say(f"{d.name}: self-heal re-activated {', '.join(healed)}")
        for p in outcome.details:
            self.say(f"{d.name}: self-heal: {p}")
        return bool(healed)

    async def reconciling(self, d: DeploymentLoop) -> None:
        """An apply starts: say so now, not after it (the page and API show it)."""
        doc = self.view.deployment(d.name)
        if doc is not None:
            self.view.put(d.name, {**doc, "conditions": await self.store_conditions(d)})

    async def store_conditions(self, d: DeploymentLoop) -> list[dict[str, Any]]:
        """The conditions as they follow from the record, what was observed last and the
        loop's own Stalled and Reconciling; stored with their transition times (in a
        worker thread: the write waits its turn behind the applies')."""
        stored, before, record = await asyncio.to_thread(self._store_conditions, d)
        self.notify_transitions(d, before, stored, record)
        return stored

    def _store_conditions(
        self, d: DeploymentLoop
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], DeploymentRecord | None]:
        from reconciler.execute.conditions import conditions
        from reconciler.state.db import open_db
        from reconciler.state.deployments import store_conditions
        from reconciler.state.rows import read_deployment

        db = open_db(self.opts.state_location, write=True)
        assert db is not None
        try:
            record = read_deployment(db, d.name)
            computed = conditions(d.observed, record, d.stalled, d.applying)
            stored = store_conditions(db, d.name, computed)
        finally:
            db.close()
        return stored, record.conditions if record else [], record

    def notify_transitions(
        self,
        d: DeploymentLoop,
        before: list[dict[str, Any]],
        after: list[dict[str, Any]],
        record: DeploymentRecord | None,
    ) -> None:
        """An event for every change of Ready or Stalled (not for the first one seen)."""
        from reconciler.controller.notify import Event

        was = {c.get("type"): c.get("status") for c in before}
        generation = record.generation if record else None
        for c in after:
            kind = c["type"]
            if kind not in ("Ready", "Stalled") or was.get(kind) in (None, c["status"]):
                continue
            true = c["status"] == "True"
            result = kind if true else {"Ready": "NotReady", "Stalled": "Recovered"}[kind]
            self.notifier.send(
                Event(
                    d.name,
                    result,
                    reason=c.get("reason"),
                    generation=generation.generation if generation else None,
                    commit=generation.commit if generation else None,
                    message=c.get("message") or "",
                )
            )

    # --- triggers ---------------------------------------------------------------------

    def poke_all(self) -> int:
        """A commit was announced: list the heads again now, and wake the loops whose
        branch moved."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.announced.set)
        return len(self.loops)

    def watch_local_repo(self) -> Any:
        """A commit in a local repository wakes every loop within a second or two."""
        if is_remote(self.opts.repo):
            return None
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        git_dir = Path(self.remote)
        controller = self

        class RefChanged(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # a read (our own ls-remote, git status) moves nothing
                path = str(event.src_path) + str(getattr(event, "dest_path", ""))
                if "/refs/" in path or path.endswith(("HEAD", "packed-refs")):
                    controller.poke_all()

        observer = Observer()
        observer.schedule(RefChanged(), str(git_dir / "refs"), recursive=True)
        observer.schedule(RefChanged(), str(git_dir), recursive=False)
        observer.daemon = True
        observer.start()
        self.say(f"watching {redact(str(git_dir))} for commits")
        return observer


def _failover_after(dep: Any) -> float | None:
    """`failover: {after}` of a deployment in reconciler.yaml (off when absent)."""
    failover = getattr(dep, "failover", None)
    return None if failover is None else float(failover.after)


def run(settings: RunSettings) -> int:
    from reconciler.state.db import exclusive

    if settings.opts.state_is_url:  # replicas on a shared server coordinate by leases
        return asyncio.run(Controller(settings).run())
    with exclusive(settings.opts.state_path, "controller", suffix="controller"):
        return asyncio.run(Controller(settings).run())
