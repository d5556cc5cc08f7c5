"""What an attempt starts from: the models at a commit (or the work tree), and their
desired state compiled against the recorded allocations."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.desired.state import DesiredState
from reconciler.models.load import (
    Config,
    LoadedDeployment,
    load_config,
    load_deployment,
    pick_deployment,
)
from reconciler.models.source import ModelSource, at_ref, is_remote, open_source
from reconciler.options import Options
from reconciler.state.recorded import RecordedState


def open_models(opts: Options, worktree: bool = False) -> tuple[ModelSource, Config]:
    source = open_source(opts.repo, opts.path, opts.ref, worktree, opts.state_root)
    return source, load_config(source)


def deployment_source(opts: Options, source: ModelSource, config: Config, name: str) -> ModelSource:
    """Where a deployment's models are read: --ref or the work tree as given; for a
    remote (or bare) repository without --ref, the head of the deployment's branch."""
    branch = config.root.deployments[name].branch
    tracks_branch = is_remote(opts.repo) or source.repo.bare
    if opts.ref is None and branch and tracks_branch and source.revision is not None:
        return at_ref(source, branch, f"deployment {name}: branch")
    return source


def load_one(opts: Options, worktree: bool = False) -> tuple[LoadedDeployment, Config]:
    source, config = open_models(opts, worktree)
    name = pick_deployment(config, opts.deployment)
    source = deployment_source(opts, source, config, name)
    return load_deployment(source, config, name, keys=opts.key_policy), config


def compile_with_record(
    opts: Options,
    loaded: LoadedDeployment,
    host_taken: Callable[[], frozenset[str]] | None = None,
) -> tuple[DesiredState, RecordedState]:
    """Compile against the recorded allocations; returns (desired, recorded state).
    `host_taken`: how to learn the host's taken addresses (the caller may have just
    looked); asked only when a local machine needs an address."""
    from reconciler.desired.allocate import needs_local_address
    from reconciler.desired.compile import compile_deployment, unaddressed_local_machines
    from reconciler.desired.host_addresses import taken_on_host

    recorded = RecordedState(deployment=loaded.name)
    if opts.state_exists:
        from reconciler.state.db import open_db
        from reconciler.state.rows import read_recorded

        db = open_db(opts.state_location, write=False)
        try:
            recorded = read_recorded(db, loaded.name)
        finally:
            if db is not None:
                db.close()
    taken: frozenset[str] = frozenset()
    if needs_local_address(loaded.name, unaddressed_local_machines(loaded), recorded.allocations):
        taken = host_taken() if host_taken else taken_on_host(registry_owner(opts))
    desired = compile_deployment(
        loaded, recorded.allocations, host_taken=taken, failed_machines=recorded.failed
    )
    return desired, recorded


def registry_owner(opts: Options) -> Path:
    """What names this state in the host-wide address registry (desired/host_addresses)."""
    return opts.state_root if opts.state_is_url else opts.state_path


@contextmanager
def paused_gc() -> Iterator[None]:
    """Loading a large model makes millions of acyclic objects; the cyclic collector's
    full passes over them cost more than the work itself (half of a 10,000-instance plan)
    and find nothing. Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
