"""The `reconciler` command line: parse, call a command module, exit. Nothing else.

Global options may stand before or after the command name (`reconciler plan --format
json` and `reconciler --format json plan` are the same); usage errors exit 1, because 2
means "changes" or "drift".
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from gc import freeze as freeze_objects
from pathlib import Path
from typing import Annotated

import typer

from reconciler import __version__
from reconciler.errors import InvalidModels, UserError
from reconciler.options import Options

app = typer.Typer(
    name="reconciler",
    help="A GitOps reconciler for machines and services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options that take a value, and flags, as accepted anywhere on the line.
GLOBAL_VALUED = {"--repo", "--path", "--ref", "--state", "-d", "--deployment", "--format"}
GLOBAL_VALUED |= {"--keys-dir", "--key-env-prefix", "--state-password-file"}
GLOBAL_FLAGS = {"-v", "--verbose", "-q", "--quiet"}

WorktreeOpt = Annotated[
    bool, typer.Option("--worktree", help="Read uncommitted files of the work tree.")
]


def hoist_globals(argv: list[str]) -> list[str]:
    """Move global options found after the command name in front of it."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        name = arg.split("=", 1)[0]
        attached = arg.startswith("-d") and len(arg) > 2 and not arg.startswith("--")  # -dNAME
        if name in GLOBAL_VALUED or attached:
            take = 1 if "=" in arg or attached else 2
            front += argv[i : i + take]
            i += take
            continue
        if arg in GLOBAL_FLAGS or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _version(value: bool) -> None:
    if value:
        print(f"reconciler {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    repo: Annotated[str, typer.Option(help="Models repository: a local path or a Git URL.")] = ".",
    path: Annotated[
        str | None, typer.Option(help="Folder of the models tree inside the repository.")
    ] = None,
    ref: Annotated[
        str | None,
        typer.Option(
            help="Commit, branch or tag to read (default: HEAD of a work tree, "
            "else the deployment's branch)."
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="State DB: a file, or a postgresql:// URL (default: $RECONCILER_STATE, "
            "else .reconciler/state.db)."
        ),
    ] = None,
    state_password_file: Annotated[
        Path | None,
        typer.Option(
            help="The password of a postgresql:// state whose URL has none (default: "
            "$RECONCILER_STATE_PASSWORD_FILE, else PGPASSWORD or ~/.pgpass)."
        ),
    ] = None,
    deployment: Annotated[
        str | None, typer.Option("-d", "--deployment", help="Deployment to act on.")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="Output: text, json, markdown (plan), svg (graph).")
    ] = "text",
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="Say more.")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Say less.")] = False,
    keys_dir: Annotated[
        str | None,
        typer.Option(
            help="The only folder key files may come from (default: $RECONCILER_KEYS_DIR)."
        ),
    ] = None,
    key_env_prefix: Annotated[
        str | None,
        typer.Option(
            help="Key variables must start with this (default: $RECONCILER_KEYS_ENV_PREFIX, "
            "else RECONCILER_KEY_)."
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version.", is_eager=True, callback=_version),
    ] = False,
) -> None:
    if state_password_file is not None:  # the controller's applies read it there too
        os.environ["RECONCILER_STATE_PASSWORD_FILE"] = str(state_password_file.resolve())
    ctx.obj = Options(
        repo=repo,
        path=path,
        ref=ref,
        state=state,
        deployment=deployment,
        format=format,
        verbose=verbose,
        quiet=quiet,
        keys_dir=keys_dir,
        key_env_prefix=key_env_prefix,
    )


@app.command()
def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Folder for the new models repository.")],
) -> int:
    """Scaffold a models repository: git init, a working example, committed."""
    from reconciler.commands import init as cmd

    return cmd.run(directory, ctx.obj.quiet)


@app.command()
def validate(ctx: typer.Context, worktree: WorktreeOpt = False) -> int:
    """Load and check every deployment; problems as file:line: key: message."""
    from reconciler.commands import validate as cmd

    return cmd.run(ctx.obj, worktree)


@app.command()
def plan(
    ctx: typer.Context,
    against: Annotated[
        str | None,
        typer.Option(help="Plan against this commit compiled from empty; no state DB (PR review)."),
    ] = None,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 2 when there are changes.")
    ] = False,
    worktree: WorktreeOpt = False,
) -> int:
    """Show what apply would do: desired state at --ref against the recorded state."""
    from reconciler.commands import plan as cmd

    return cmd.run(ctx.obj, against, exit_code, worktree)


@app.command()
def schema(
    target: Annotated[
        str, typer.Option("--for", help="Whose schema: model (a model file) or reconciler.yaml.")
    ] = "model",
) -> int:
    """The JSON Schema of a model file (or reconciler.yaml), for editors."""
    from reconciler.commands import schema as cmd

    return cmd.run(target)


@app.command()
def graph(ctx: typer.Context, worktree: WorktreeOpt = False) -> int:
    """Services, instances and machines with dependency edges, as Graphviz DOT (or SVG)."""
    from reconciler.commands import graph as cmd

    return cmd.run(ctx.obj, worktree)


@app.command()
def apply(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing.")
    ] = False,
    only: Annotated[str | None, typer.Option("--only", help="Only these machines: M1,M2.")] = None,
    max_concurrent: Annotated[
        int, typer.Option("--max-concurrent", min=1, help="Machines transferred to at once.")
    ] = 10,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    copy_only: Annotated[
        bool, typer.Option("--copy-only", help="Build and transfer (steps 1-3); activate nothing.")
    ] = False,
    kill_obsolete: Annotated[
        bool,
        typer.Option(
            "--kill-obsolete", help="Destroy provisioned machines no longer in the model."
        ),
    ] = False,
    allow_recreate: Annotated[
        bool,
        typer.Option("--allow-recreate", help="Replace machines whose immutable settings changed."),
    ] = False,
    provision_only: Annotated[
        bool, typer.Option("--provision-only", help="Only provision machines (step 1).")
    ] = False,
) -> int:
    """Run the plan: provision, build, transfer only what machines lack, then activate."""
    scope = sorted({n.strip() for n in (only or "").split(",") if n.strip()}) or None
    if copy_only and not dry_run:  # first: the handshakes run while the imports below do
        from reconciler.execute.warm_up import warm_recorded

        warm_recorded(ctx.obj, scope, max_concurrent)
    from reconciler.commands import apply as cmd
    from reconciler.execute.steps import AttemptOptions

    options = AttemptOptions(
        scope=scope,
        max_concurrent=max_concurrent,
        copy_only=copy_only,
        provision_only=provision_only,
        kill_obsolete=kill_obsolete,
        allow_recreate=allow_recreate,
    )
    return cmd.run(ctx.obj, options, dry_run=dry_run, yes=yes)


@app.command()
def rollback(
    ctx: typer.Context,
    to: Annotated[
        int | None,
        typer.Option("--to", help="Generation to deploy again (default: the one before)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> int:
    """Deploy generation N's commit again; the controller's auto-apply pauses until a new commit."""
    from reconciler.commands import rollback as cmd

    return cmd.run(ctx.obj, to, yes)


@app.command()
def run(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT of the HTTP API, metrics and status page.")
    ] = "127.0.0.1:8430",
    once: Annotated[bool, typer.Option("--once", help="One pass over every deployment.")] = False,
    webhook_secret_file: Annotated[
        Path | None,
        typer.Option(help="Secret for POST /hooks/git (GitHub HMAC, GitLab token); else 404."),
    ] = None,
    api_token_file: Annotated[
        Path | None, typer.Option(help="Bearer token required by all but probes and webhook.")
    ] = None,
    allowed_signers: Annotated[
        Path | None,
        typer.Option(help="Apply only commits signed by these SSH keys (git allowed-signers)."),
    ] = None,
    gpg_keyring: Annotated[
        Path | None, typer.Option(help="Apply only commits signed by a key in this keyring.")
    ] = None,
    known_hosts: Annotated[
        Path | None, typer.Option(help="OpenSSH known_hosts pinning machines without hostKey.")
    ] = None,
    commit_url: Annotated[
        str | None,
        typer.Option(
            help="Commit links on the status page, e.g. https://host/org/repo/commit/{sha}"
        ),
    ] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(help="POST a JSON event here on Ready/Stalled changes and failed attempts."),
    ] = None,
    notify_secret_file: Annotated[
        Path | None, typer.Option(help="Sign notifications with HMAC-SHA256 of this secret.")
    ] = None,
    max_parallel_applies: Annotated[
        int | None,
        typer.Option(min=1, help="Applies of different deployments at once (default 4 a core)."),
    ] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(min=3, help="How long a replica's hold on its deployments lasts unrenewed."),
    ] = 30.0,
    observe_interval: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Seconds between observations of the machines (default: "
            "the shortest deployment interval).",
        ),
    ] = None,
) -> int:
    """The controller: every new commit on a tracked branch becomes a deployed generation."""
    from reconciler.controller.git import Signers
    from reconciler.controller.run import APPLIES_PER_CORE, RunSettings
    from reconciler.controller.run import run as run_controller

    for option, path in (
        ("--webhook-secret-file", webhook_secret_file),
        ("--api-token-file", api_token_file),
        ("--allowed-signers", allowed_signers),
        ("--gpg-keyring", gpg_keyring),
        ("--known-hosts", known_hosts),
        ("--notify-secret-file", notify_secret_file),
    ):
        if path is not None and not path.is_file():
            raise UserError(f"{option} {path}: no such file")
    return run_controller(
        RunSettings(
            opts=ctx.obj,
            listen=listen,
            webhook_secret_file=webhook_secret_file,
            api_token_file=api_token_file,
            signers=Signers(allowed_signers, gpg_keyring),
            known_hosts=known_hosts,
            commit_url=commit_url,
            once=once,
            notify=tuple(notify or ()),
            notify_secret_file=notify_secret_file,
            max_parallel_applies=max_parallel_applies or APPLIES_PER_CORE * (os.cpu_count() or 1),
            lease_seconds=lease_seconds,
            observe_interval=observe_interval,
        )
    )


@app.command()
def destroy(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    keep_machines: Annotated[
        bool, typer.Option("--keep-machines", help="Do not destroy provisioned machines.")
    ] = False,
) -> int:
    """Deactivate everything in reverse order, remove profiles, destroy provisioned machines."""
    from reconciler.commands import destroy as cmd

    return cmd.run(ctx.obj, yes, keep_machines)


@app.command()
def status(ctx: typer.Context) -> int:
    """Last applied generation and attempt, machines and instances as observed, conditions."""
    from reconciler.commands import status as cmd

    return cmd.run(ctx.obj)


@app.command()
def history(
    ctx: typer.Context,
    git: Annotated[
        bool, typer.Option("--git", help="Interleave the models repository's commits.")
    ] = False,
) -> int:
    """Generations and failed attempts, newest first, with their commits and changes."""
    from reconciler.commands import history as cmd

    return cmd.run(ctx.obj, git)


@app.command()
def check(ctx: typer.Context) -> int:
    """Observe the machines and report drift from the record: exit 0 none, 2 drift."""
    from reconciler.commands import check as cmd

    return cmd.run(ctx.obj)


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    ctx: typer.Context,
    machine: Annotated[str, typer.Argument(help="Machine of the deployment.")],
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run (after --); a shell without.")
    ] = None,
) -> int:
    """A shell, or a command, on a machine of the deployment."""
    from reconciler.commands import ssh as cmd

    words = command or []
    return cmd.run(ctx.obj, machine, words[1:] if words[:1] == ["--"] else words)


@app.command()
def gc(
    ctx: typer.Context,
    keep: Annotated[
        int, typer.Option("--keep", help="Generations whose paths and profiles are kept.")
    ] = 3,
    delete_state: Annotated[
        bool,
        typer.Option(
            "--delete-state",
            help="Also delete the data of services no kept generation places on a machine.",
        ),
    ] = False,
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age",
            help="Keep unreferenced store paths received more recently (another apply "
            "may be about to use them).",
        ),
    ] = "10m",
) -> int:
    """Remove store paths, profiles (and state) no longer referenced by the last N generations."""
    from reconciler.commands import gc as cmd

    return cmd.run(ctx.obj, keep, delete_state, min_age)


@app.command()
def reconstruct(ctx: typer.Context) -> int:
    """Rebuild a lost record of the deployment from the manifests on its machines."""
    from reconciler.commands import reconstruct as cmd

    return cmd.run(ctx.obj)


def main(argv: list[str] | None = None) -> None:
    # asyncssh's import warns that cryptography deprecates DSA: noise in every message
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    # the collector's last pass over every object at exit took 0.3-0.5 s of each command
    atexit.register(freeze_objects)
    args = hoist_globals(list(sys.argv[1:] if argv is None else argv))
    try:
        result = app(args=args, prog_name="reconciler", standalone_mode=False)
    except typer.TyperException as e:  # usage errors: exit 1, since 2 means changes
        show = getattr(e, "show", None)
        if show:
            show()
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except InvalidModels as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        n = len(e.problems)
        print(f"{n} problem{'s' * (n != 1)}; nothing was changed.", file=sys.stderr)
        sys.exit(1)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
