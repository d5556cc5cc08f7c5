"""Evaluating commits in proportion to what changed (SPEC §5 at scale): `reconciler.yaml`
is read once per commit, and a deployment is loaded, compiled and planned again only when
its inputs changed — its entry in `reconciler.yaml`, the blobs of its model files, the
trees of its packages' `src` — or when its record changed (an attempt since). The rest
get the verdict of the last evaluation of the same inputs. The ids of all deployments'
inputs at a commit come from one `git cat-file --batch-check`."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.execute.inputs import paused_gc
from reconciler.options import Options

if TYPE_CHECKING:
    from reconciler.models.load import Config
    from reconciler.models.source import ModelSource, Revision

COMMITS_KEPT = 4  # commits whose parsed reconciler.yaml is kept (branches, a new head)
# How long the host's taken addresses are reused between evaluations: reading them costs
# O(deployments) (a registry file each); a plan against a slightly older view only
# decides whether to apply, and the apply looks again.
TAKEN_FOR = 5.0


@dataclass(frozen=True)
class Evaluation:
    """What the loop needs of a commit's evaluation for one deployment."""

    git_dir: str
    revision: Revision | None
    changes: bool
    plan_text: str


@dataclass
class _Commit:
    source: ModelSource | None
    config: Config | None
    error: Exception | None  # reconciler.yaml itself is bad: every deployment says so
    inputs: dict[str, tuple[Any, ...]] | None = None  # deployment → the ids of its inputs


@dataclass(frozen=True)
class _Verdict:
    inputs: tuple[Any, ...]
    record: tuple[Any, ...]
    changes: bool
    plan_text: str
    src: tuple[str, ...]  # the package src folders the model names


class Evaluator:
    """Shared by every deployment loop; thread safe (evaluations run in worker threads,
    one at a time: they are CPU-bound and Git objects are read through one repository)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.commits: OrderedDict[str, _Commit] = OrderedDict()
        self.verdicts: dict[str, _Verdict] = {}
        self.lock = threading.Lock()
        self.evaluated = 0  # full evaluations, for tests and the benchmark
        self.reused = 0
        self.taken: tuple[float, frozenset[str]] | None = None  # (when, addresses)

    def evaluate(self, name: str, head: str, fresh: bool = False) -> Evaluation:
        """The deployment's evaluation at `head` (`fresh`: never a verdict reused); raises
        InvalidModels or UserError like loading does."""
        with self.lock, paused_gc():
            commit = self._commit(head)
            if commit.error is not None:
                raise commit.error
            assert commit.source is not None and commit.config is not None
            if name not in commit.config.root.deployments:
                from reconciler.errors import UserError

                raise UserError(f"deployment {name} is not in reconciler.yaml at {head[:12]}")
            inputs = self._inputs(commit).get(name)
            record = _record_version(self.opts, name)
            known = self.verdicts.get(name)
            git_dir = str(commit.source.repo.git_dir)
            same = known and (known.inputs, known.record) == (inputs, record)
            if known and same and not fresh:
                self.reused += 1
                return Evaluation(git_dir, commit.source.revision, known.changes, known.plan_text)
            changes, text, src = self._plan(commit, name)
            self.evaluated += 1
            self.verdicts[name] = _Verdict(
                self._inputs_of(commit, name, src), record, changes, text, src
            )
            return Evaluation(git_dir, commit.source.revision, changes, text)

    def config(self, head: str) -> Config:
        """reconciler.yaml at `head`, parsed once for every deployment."""
        with self.lock:
            commit = self._commit(head)
        if commit.error is not None:
            raise commit.error
        assert commit.config is not None
        return commit.config

    def changed(self, head: str, names: list[str]) -> set[str]:
        """Those of `names` whose inputs at `head` are not those last evaluated (or
        never evaluated): whom a commit concerns."""
        with self.lock, paused_gc():
            commit = self._commit(head)
            if commit.error is not None or commit.config is None:
                return set(names)
            inputs = self._inputs(commit)
        return {
            n for n in names if (v := self.verdicts.get(n)) is None or v.inputs != inputs.get(n)
        }

    def applied(self, name: str, head: str) -> None:
        """After a successful apply of `head`: its inputs now plan no changes."""
        with self.lock:
            known, commit = self.verdicts.get(name), self.commits.get(head)
            if known is not None and commit is not None and commit.source is not None:
                inputs = self._inputs_of(commit, name, known.src)
                record = _record_version(self.opts, name)
                self.verdicts[name] = dataclasses.replace(
                    known, inputs=inputs, record=record, changes=False
                )

    def _commit(self, head: str) -> _Commit:
        from reconciler.execute.inputs import open_models

        found = self.commits.get(head)
        if found is None:
            try:
                source, config = open_models(dataclasses.replace(self.opts, ref=head))
                # every deployment's model files, looked up at once (then read by id)
                source.entries(
                    sorted({r for d in config.root.deployments.values() for r in d.models})
                )
                found = _Commit(source, config, None)
            except Exception as e:  # InvalidModels, UserError: the same for every deployment
                found = _Commit(None, None, e)
            self.commits[head] = found
            while len(self.commits) > COMMITS_KEPT:
                self.commits.popitem(last=False)
        self.commits.move_to_end(head)
        return found

    def _inputs(self, commit: _Commit) -> dict[str, tuple[Any, ...]]:
        """Every deployment's input ids at this commit, looked up together (those never
        evaluated have none yet)."""
        if commit.inputs is None:
            assert commit.source is not None and commit.config is not None
            wanted = {n: v for n, v in self.verdicts.items() if n in commit.config.root.deployments}
            rels = {r for v in wanted.values() for r in v.src}
            for n in wanted:
                rels.update(commit.config.root.deployments[n].models)
            entries = commit.source.entries(sorted(rels))
            commit.inputs = {n: _key(commit, n, v.src, entries) for n, v in wanted.items()}
        return commit.inputs

    def _inputs_of(self, commit: _Commit, name: str, src: tuple[str, ...]) -> tuple[Any, ...]:
        assert commit.source is not None and commit.config is not None
        models = commit.config.root.deployments[name].models
        key = _key(commit, name, src, commit.source.entries(sorted({*models, *src})))
        if commit.inputs is not None:
            commit.inputs[name] = key
        return key

    def _plan(self, commit: _Commit, name: str) -> tuple[bool, str, tuple[str, ...]]:
        from reconciler.execute.inputs import compile_with_record
        from reconciler.models.load import load_deployment
        from reconciler.models.source import within_tree
        from reconciler.plan.diff import make_plan
        from reconciler.plan.render import render_text

        assert commit.source is not None and commit.config is not None
        loaded = load_deployment(commit.source, commit.config, name, keys=self.opts.key_policy)
        desired, recorded = compile_with_record(self.opts, loaded, self._taken)
        plan = make_plan(desired, recorded, destroy_machines=loaded.config.destroyMachines)
        src = tuple(
            sorted(
                {
                    rel
                    for p in loaded.model.packages.values()
                    if p.src is not None and (rel := within_tree(p.src)) is not None
                }
            )
        )
        return bool(plan.has_changes), render_text(plan, colour=False, verbose=False), src

    def _taken(self) -> frozenset[str]:
        from reconciler.desired.host_addresses import taken_on_host
        from reconciler.execute.inputs import registry_owner

        now = time.monotonic()
        if self.taken is None or now - self.taken[0] > TAKEN_FOR:
            self.taken = (now, taken_on_host(registry_owner(self.opts)))
        return self.taken[1]


def _key(
    commit: _Commit, name: str, src: tuple[str, ...], entries: dict[str, Any]
) -> tuple[Any, ...]:
    assert commit.config is not None
    entry = commit.config.root.deployments[name]
    ids = tuple(getattr(entries.get(r), "id", None) for r in (*entry.models, *src))
    return (json.dumps(entry.model_dump(mode="json"), sort_keys=True), ids)


def _record_version(opts: Options, name: str) -> tuple[Any, ...]:
    """What changes whenever anything is recorded for the deployment (an attempt of the
    controller's, a person's apply, rollback or destroy, a self-heal, a failed machine)."""
    from reconciler.state.db import database_errors, open_db
    from reconciler.state.rows import record_versions

    db = open_db(opts.state_location, write=False)
    if db is None:
        return ()
    try:
        return record_versions(db, name).get(name, ())
    except database_errors():  # a state not migrated yet: nothing recorded
        return ()
    finally:
        db.close()
