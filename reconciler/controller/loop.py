"""One deployment's level-triggered loop (SPEC §5): observe the branch head cheaply; on a
new commit check it (descends from the last applied one, signed when signers are
configured, valid), plan, and apply when `autoApply`; with `selfHeal`, re-activate what a
check finds dead. A failing commit is retried only after a backoff or when a new commit
arrives; the last good generation keeps running meanwhile.

The branch head comes from the listing every loop shares (controller/git.py: Heads) and
the commit's evaluation from the shared Evaluator (controller/evaluate.py): a commit
costs each deployment only what changed for it.

Applies run as a `reconciler apply` child process, forked from a warm zygote
(controller/zygote.py): SIGTERM reaches it as it would from a terminal (it settles, then
exits), and a crash in it never takes the controller down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.controller.evaluate import Evaluator
from reconciler.controller.git import GitError, Heads, Signers, check_signature, is_ancestor
from reconciler.controller.zygote import Fork, Zygote
from reconciler.errors import InvalidModels, UserError
from reconciler.execute.attempt import FENCE_ENV, REASON_ENV
from reconciler.execute.outcome import Outcome, Reason, Result
from reconciler.options import Options

if TYPE_CHECKING:
    from reconciler.execute.observe import Observation
    from reconciler.state.rows import DeploymentRow

BACKOFF_FIRST = 5.0  # seconds after the first failure of a commit
BACKOFF_CAP = 600.0  # SPEC §5: capped at 10 minutes
STDERR_TAIL = 20  # lines of a failed apply kept as the condition's message


def backoff(failures: int) -> float:
    """Exponential with ±20 % jitter, capped: 5 s, 10 s, 20 s, … 10 min."""
    base = min(BACKOFF_CAP, BACKOFF_FIRST * float(2 ** max(0, failures - 1)))
    return min(BACKOFF_CAP, base * random.uniform(0.8, 1.2))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class PassResult:
    """What one pass did, for metrics and the view."""

    result: str  # applied | unchanged | failed | invalid | refused | paused | planned | idle
    seconds: float = 0.0
    transferred: int = 0
    message: str = ""
    committed: float | None = None  # the applied commit's time (for the lag metric)


@dataclass
class DeploymentLoop:
    name: str
    opts: Options  # --repo, --path, --state of the controller
    remote: str  # what `git ls-remote` asks: the URL, or a local repository's git dir
    branch: str | None
    interval: float
    auto_apply: bool
    self_heal: bool
    allow_rewind: bool
    signers: Signers
    applies: asyncio.Semaphore  # a bound on the applies running at once (all deployments)
    heads: Heads = field(default_factory=Heads)  # shared by all loops
    evaluator: Evaluator | None = None  # shared by all loops (one of its own if not given)
    zygote: Zygote | None = None  # what applies are forked from (else a fresh process)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    head: str | None = None
    handled: str | None = None  # the head last acted on with a final result
    failures: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None
    stalled: tuple[Reason, str] | None = None  # the controller's own Stalled (reason, message)
    next_poll: float = 0.0
    child: asyncio.subprocess.Process | Fork | None = None
    applying: str | None = None  # the commit being applied now
    on_apply: Callable[[DeploymentLoop], Awaitable[None]] | None = None  # says Reconciling
    passes: int = 0
    in_pass: bool = False  # a replica never gives back a deployment in the middle of a pass
    fence: str | None = None  # the owner lease an apply started now must still hold
    failover_after: float | None = None  # SPEC §10: seconds unreachable before failed
    reason: str | None = None  # set by failover: apply the same commit again, for this
    applied_for: str | None = None  # the reason of the last apply, once it succeeded
    observed: Observation | None = None  # the machines as last seen
    last_answered: dict[str, float] = field(default_factory=dict)  # machine → when (failover)
    keeping: asyncio.Task[list[str]] | None = None  # its snapshots being kept (failover)
    plan_text: str | None = None  # the plan of the head, as last evaluated
    last_plan: str | None = None  # the plan of the commit that last failed or was refused

    def __post_init__(self) -> None:
        if self.evaluator is None:
            self.evaluator = Evaluator(self.opts)

    def poke(self) -> None:
        self.wake.set()

    # --- one pass ---------------------------------------------------------------------

    async def reconcile(self) -> PassResult:
        """Look at the branch head and act on it; never raises for the deployment's own
        problems (they become the outcome and a Stalled condition)."""
        started = time.monotonic()
        self.passes += 1
        try:
            head = await self.heads.head(self.remote, self.branch, max_age=self.interval)
        except GitError as e:
            return self._fail("failed", Reason.HEAD_UNAVAILABLE, str(e), started, retry=False)
        if head != self.head:  # a new commit cancels waiting on a stuck one
            self.head, self.failures, self.backoff_until = head, 0, 0.0
        if self.reason and head == self.handled:  # failover: the same commit, again
            self.handled = None
        if head == self.handled:
            return PassResult("idle", time.monotonic() - started)
        if self.failures and time.monotonic() < self.backoff_until:
            return PassResult("idle", time.monotonic() - started)
        return await self._act(head, started)

    async def _act(self, head: str, started: float) -> PassResult:
        assert self.evaluator is not None
        self.plan_text = None
        try:
            # failover: the same inputs, but a machine recorded failed since: plan afresh
            fresh = self.reason is not None
            loaded = await asyncio.to_thread(self.evaluator.evaluate, self.name, head, fresh)
        except InvalidModels as e:
            lines = [str(p) for p in e.problems]
            return self._fail("invalid", Reason.INVALID_MODELS, "\n".join(lines), started)
        except UserError as e:
            return self._fail("invalid", Reason.INVALID_MODELS, str(e), started)
        self.plan_text, changes, git_dir = loaded.plan_text, loaded.changes, loaded.git_dir
        record = await asyncio.to_thread(_deployment_row, self.opts, self.name)
        last = record.last_applied_sha if record else None
        rewound = last and last != head and not await is_ancestor(git_dir, last, head)
        if rewound and not self.allow_rewind:
            return self._fail(
                "refused",
                Reason.NOT_A_DESCENDANT,
                f"head {head[:12]} does not descend from the last applied commit "
                f"{str(last)[:12]}; set allowRewind: true to accept it",
                started,
                retry=False,
            )
        if self.signers.required:
            why = await check_signature(git_dir, head, self.signers)
            if why:
                return self._fail("refused", Reason.UNTRUSTED_COMMIT, why, started, retry=False)
        if record and record.paused_at_sha == head:
            self._ok(head)
            return PassResult("paused", time.monotonic() - started, message="paused by rollback")
        if not changes:
            self._ok(head)
            return PassResult("unchanged", time.monotonic() - started)
        if not self.auto_apply:
            self._ok(head)
            return PassResult("planned", time.monotonic() - started, message="autoApply is off")
        async with self.applies:
            self.applying = head
            if self.on_apply is not None:
                await self.on_apply(self)
            try:
                reason = self.reason
                outcome = await self._apply(head)
            finally:
                self.applying = None
            self.applied_for = reason if outcome.ok else None
        if outcome.reason == Reason.BUSY:  # another attempt of it runs (a person's apply,
            # a replica about to give it back): not a failure; the next pass tries again
            return PassResult("idle", time.monotonic() - started, message=outcome.message)
        if outcome.ok:
            self._ok(head)
            await asyncio.to_thread(self.evaluator.applied, self.name, head)
            seconds = time.monotonic() - started
            committed = _timestamp(loaded.revision.time) if loaded.revision else None
            return PassResult("applied", seconds, outcome.transferred_bytes, committed=committed)
        reason = Reason.ROLLBACK_FAILED if outcome.result == Result.STALLED else Reason.APPLY_FAILED
        return self._fail("failed", reason, outcome.message, started)

    async def _apply(self, head: str) -> Outcome:
        """The apply runs as a child process (a crash in it never takes the controller
        down); it prints its outcome as JSON, and that is what is read back."""
        o = self.opts
        argv = ["--repo", o.repo, "--ref", head, *(["--path", o.path] if o.path else [])]
        argv += ["-d", self.name, "-q", "apply", "--yes", "--format", "json"]
        # the state by the environment: a password in its URL stays off the process list;
        # the operator's key options as well (they are global options of the controller)
        env = {**os.environ, "RECONCILER_STATE": o.state_location}
        if o.keys_dir:
            env["RECONCILER_KEYS_DIR"] = os.path.abspath(o.keys_dir)
        if o.key_env_prefix:
            env["RECONCILER_KEYS_ENV_PREFIX"] = o.key_env_prefix
        if self.fence:
            env[FENCE_ENV] = self.fence
        if self.reason:  # why this attempt (failover): recorded with the generation
            env[REASON_ENV] = self.reason
        self.child = None
        if self.zygote is not None:
            with contextlib.suppress(OSError):  # no zygote to be had: a process of its own
                self.child = await self.zygote.fork(argv, env)
        if self.child is None:
            self.child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reconciler",
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a terminal's ^C reaches it only through us
            )
        try:
            out, err = await self.child.communicate()
        finally:
            code = self.child.returncode
            self.child = None
        try:
            outcome = Outcome.from_json(json.loads(out))
        except (ValueError, KeyError, TypeError):  # it died before it could say
            outcome = Outcome(Result.FAILED, Reason.APPLY_FAILED, f"apply exited with {code}")
        tail = "\n".join(err.decode(errors="replace").strip().splitlines()[-STDERR_TAIL:])
        if not outcome.ok and tail:  # what it said on the way is the message people need
            outcome = dataclasses.replace(outcome, message=tail)
        return outcome

    def terminate_child(self) -> None:
        """SIGTERM: the apply in flight settles (rolls back or finishes) and exits."""
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(signal.SIGTERM)

    def _ok(self, head: str) -> None:
        self.handled, self.failures, self.backoff_until = head, 0, 0.0
        self.last_error, self.stalled, self.last_plan, self.reason = None, None, None, None

    def _fail(
        self, result: str, reason: Reason, message: str, started: float, retry: bool = True
    ) -> PassResult:
        """Stalled until a new commit; `retry`: also after the backoff (a transient
        cause may pass; a refusal or bad models will not)."""
        self.failures += 1
        self.last_error, self.last_plan = message, self.plan_text
        self.stalled = (reason, message)
        if retry:
            self.backoff_until = time.monotonic() + backoff(self.failures)
        else:
            self.handled = self.head
        return PassResult(result, time.monotonic() - started, message=message)

    # --- what the view shows ----------------------------------------------------------

    def info(self, last: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the view shows of the loop; `last`: the previous one, when the record has
        not changed since (whether it is paused is not read again)."""
        left = self.backoff_until - time.monotonic()
        paused = last.get("paused") if last else (row := _deployment_row(self.opts, self.name))
        return {
            "autoApply": self.auto_apply,
            "selfHeal": self.self_heal,
            "paused": bool(paused if last else row and row.paused_at_sha),
            "nextPollIn": max(0.0, round(self.next_poll - time.monotonic(), 1)),
            "backoffUntil": (
                datetime.fromtimestamp(time.time() + left, UTC).isoformat(timespec="seconds")
                if self.failures and left > 0
                else None
            ),
            "lastError": self.last_error,
            "lastPlan": self.last_plan,
            "trackedBranch": self.branch,
            "head": self.head,
        }


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _deployment_row(opts: Options, name: str) -> DeploymentRow | None:
    from reconciler.state.db import open_db
    from reconciler.state.rows import deployment_row

    db = open_db(opts.state_location, write=False)
    try:
        return deployment_row(db, name)
    finally:
        if db is not None:
            db.close()
