"""`reconciler plan`: desired state at a commit against the record, or against a base commit."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    commit,
    free_local_addresses,
    git,
    make_repo,
    run_cli,
    run_parallel,
)

from .conftest import (
    assert_clean_failure,
    basic_files,
    no_state_db,
    problem_lines,
)

ALL_INSTANCES = ["api@m1", "cron@m2", "db@m1", "web@m1", "web@m2"]


def plan_json(*args: str, cwd: Path, **kw: Any) -> dict[str, Any]:
    done = run_cli("plan", *args, "--format", "json", cwd=cwd, **kw)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def actions(plan: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["action"] for i in plan["instances"]}


def reasons(plan: dict[str, Any]) -> dict[str, list[str]]:
    return {i["key"]: i["reasons"] for i in plan["instances"]}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two commits: `base`, then HEAD where only package api's source changed."""
    repo = make_repo(tmp_path_factory.mktemp("plan") / "models", basic_files())
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "base")
    head = commit(repo, {"pkgs/api/bin/api": "#!/bin/sh\necho api v2\n"}, "api v2")
    return {"repo": repo, "base": base, "head": head}


# --- from empty state ------------------------------------------------------------------


def test_plan_from_empty_state_text(history: dict[str, Any]) -> None:
    repo = history["repo"]
    done = run_cli("plan", cwd=repo)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"Deployment app at {history['head'][:12]}, against nothing deployed\n")
    for machine, address in zip(("m1", "m2"), free_local_addresses(2), strict=True):
        assert re.search(rf"^  \+ {machine} +add +local +{re.escape(address)}$", out, re.M), out
    for key in ALL_INSTANCES:
        assert re.search(rf"^  \+ {re.escape(key)} +activate  \(new\)$", out, re.M), out
    assert out.rstrip("\n").splitlines()[-1] == (
        "Plan: 2 machines to add, 5 store paths to transfer, 5 to activate, 0 to replace, "
        "0 to deactivate, 0 unchanged."
    )
    assert "\033[" not in out, "no colours when stdout is not a terminal"
    assert no_state_db(repo)


def test_exit_code_option(history: dict[str, Any]) -> None:
    changes, plain, none = run_parallel(
        ["plan", "--exit-code"],
        ["plan"],
        ["plan", "--against", "HEAD", "--exit-code"],
        cwd=history["repo"],
    )
    assert changes.returncode == 2, changes.stderr
    assert plain.returncode == 0, plain.stderr
    assert changes.stdout == plain.stdout
    assert none.returncode == 0, none.stderr
    assert "No changes. The deployment matches the desired state." in none.stdout


def test_plan_json_from_empty_state(history: dict[str, Any]) -> None:
    plan = plan_json(cwd=history["repo"])
    assert plan["formatVersion"] == 1
    assert plan["deployment"] == "app"
    assert plan["revision"] == history["head"]
    assert plan["baseRevision"] is None
    assert plan["hasChanges"] is True
    assert plan["blockers"] == []
    first, second = free_local_addresses(2)
    assert {m["name"]: (m["action"], m["address"]) for m in plan["machines"]} == {
        "m1": ("add", first),
        "m2": ("add", second),
    }
    summary = plan["summary"]
    assert summary["machinesToAdd"] == 2
    assert summary["toActivate"] == 5
    assert summary["toReplace"] == summary["toDeactivate"] == summary["unchanged"] == 0
    assert summary["pathsToTransfer"] == 5
    assert actions(plan) == dict.fromkeys(ALL_INSTANCES, "activate")
    assert all(r == ["new"] for r in reasons(plan).values())
    assert all(i["oldIdentity"] is None and len(i["newIdentity"]) == 64 for i in plan["instances"])
    order = plan["activationOrder"]
    assert sorted(order) == ALL_INSTANCES
    # dependsOn: db before api before web
    assert order.index("db@m1") < order.index("api@m1") < order.index("web@m1")
    assert order.index("api@m1") < order.index("web@m2")
    assert plan["deactivationOrder"] == []
    transfers = {t["machine"]: t["paths"] for t in plan["transfers"]}
    assert sorted(p.split("-", 1)[1] for p in transfers["m1"]) == ["api", "db", "web"]
    assert sorted(p.split("-", 1)[1] for p in transfers["m2"]) == ["tool", "web"]
    assert all(re.fullmatch(r"[0-9a-f]{32}-[a-z]+", p) for p in transfers["m1"])


def test_plan_markdown(history: dict[str, Any]) -> None:
    done = run_cli("plan", "--format", "markdown", cwd=history["repo"])
    assert done.returncode == 0, done.stderr
    md = done.stdout
    assert f"### Reconciler plan for deployment `app` at `{history['head'][:12]}`" in md
    assert (
        "**Plan: 2 machines to add, 5 store paths to transfer, 5 to activate, 0 to replace, "
        "0 to deactivate, 0 unchanged.**"
    ) in md
    assert "<details>" in md and "</details>" in md
    assert md.index("<details>") < md.index("`api@m1`") < md.index("</details>")


def test_unknown_format_is_refused(history: dict[str, Any]) -> None:
    done = run_cli("plan", "--format", "yaml", cwd=history["repo"])
    assert_clean_failure(done)
    assert done.stderr == "error: --format yaml: this command writes text, json, markdown\n"


# --- --against (pull-request review) ----------------------------------------------------


def test_against_base_replaces_changed_identities_only(history: dict[str, Any]) -> None:
    repo = history["repo"]
    plan = plan_json("--against", history["base"], cwd=repo)
    assert plan["revision"] == history["head"]
    assert plan["baseRevision"] == history["base"]
    assert actions(plan) == {
        "api@m1": "replace",  # its package's src changed
        "web@m1": "replace",  # dependsOn api
        "web@m2": "replace",  # dependsOn api
        "db@m1": "keep",  # api depends on db, not the other way round
        "cron@m2": "keep",  # connectsTo web: receives the same host and port
    }
    why = reasons(plan)
    assert len(why["api@m1"]) == 1 and why["api@m1"][0].startswith("package api@"), why
    assert why["web@m1"] == why["web@m2"] == ["dependsOn api changed"]
    assert why["db@m1"] == why["cron@m2"] == []
    old_new = {i["key"]: (i["oldIdentity"], i["newIdentity"]) for i in plan["instances"]}
    assert old_new["db@m1"][0] == old_new["db@m1"][1]
    assert old_new["api@m1"][0] != old_new["api@m1"][1]
    assert {m["name"]: m["action"] for m in plan["machines"]} == {"m1": "keep", "m2": "keep"}
    assert [t["machine"] for t in plan["transfers"]] == ["m1"]
    assert [p.split("-", 1)[1] for p in plan["transfers"][0]["paths"]] == ["api"]
    summary = plan["summary"]
    assert (summary["toReplace"], summary["unchanged"], summary["toActivate"]) == (3, 2, 0)
    assert plan["activationOrder"] == ["api@m1", "web@m1", "web@m2"]
    assert plan["deactivationOrder"] == ["web@m2", "web@m1", "api@m1"]
    assert no_state_db(repo)
    assert not (repo / ".reconciler").exists()


def test_against_text_and_markdown(history: dict[str, Any]) -> None:
    text, md = run_parallel(
        ["plan", "--against", "base", "--exit-code"],
        ["plan", "--against", "base", "--format", "markdown"],
        cwd=history["repo"],
    )
    assert text.returncode == 2, text.stderr
    assert f"against {history['base'][:12]}" in text.stdout.splitlines()[0]
    assert re.search(
        r"^  ~ api@m1 +replace  \(package api@[0-9a-f]{8} → api@[0-9a-f]{8}\)$", text.stdout, re.M
    ), text.stdout
    assert re.search(r"^  ~ web@m2 +replace  \(dependsOn api changed\)$", text.stdout, re.M)
    assert text.stdout.rstrip().endswith(
        "Plan: 1 store path to transfer, 0 to activate, 3 to replace, 0 to deactivate, 2 unchanged."
    )
    assert md.returncode == 0, md.stderr
    assert "| ~ | `web@m1` | replace | dependsOn api changed |" in md.stdout
    assert "`db@m1`" not in md.stdout, "unchanged instances are not listed"


def test_against_never_opens_the_state_db(history: dict[str, Any], tmp_path: Path) -> None:
    garbage = tmp_path / "state.db"
    garbage.write_bytes(b"this is not an SQLite database\n")
    done = run_cli("plan", "--state", str(garbage), "--against", "base", cwd=history["repo"])
    assert done.returncode == 0, done.stderr
    assert "3 to replace" in done.stdout
    assert garbage.read_bytes() == b"this is not an SQLite database\n"


def test_a_corrupt_state_db_is_a_clean_error(history: dict[str, Any], tmp_path: Path) -> None:
    garbage = tmp_path / "state.db"
    garbage.write_bytes(b"this is not an SQLite database\n")
    done = run_cli("plan", "--state", str(garbage), cwd=history["repo"])
    assert_clean_failure(done)
    assert str(garbage) in done.stderr


def test_against_an_invalid_base_plans_against_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", basic_files(**{"network.yaml": "machines: [\n"}))
    commit(repo, basic_files(), "fix the network model")
    done = run_cli("plan", "--against", "HEAD~1", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert actions(json.loads(done.stdout)) == dict.fromkeys(ALL_INSTANCES, "activate")
    note = done.stderr.splitlines()[0]
    assert note.startswith("note: ") and "HEAD~1" in note, done.stderr
    assert "does not validate; planning against nothing" in note
    assert "  network.yaml:2: invalid YAML: " in done.stderr


def test_against_an_unknown_commit_names_the_option(history: dict[str, Any]) -> None:
    done = run_cli("plan", "--against", "nope", cwd=history["repo"])
    assert_clean_failure(done)
    assert done.stderr.startswith("error: --against nope: no such commit"), done.stderr


# --- choosing the commit and the models tree --------------------------------------------


def test_ref_selects_the_commit(history: dict[str, Any]) -> None:
    repo = history["repo"]
    at_base, at_tag, at_head = (
        json.loads(done.stdout)
        for done in run_parallel(
            ["plan", "--ref", history["base"], "--format", "json"],
            ["plan", "--ref", "base", "--format", "json"],
            ["plan", "--format", "json"],
            cwd=repo,
        )
    )
    assert at_base["revision"] == at_tag["revision"] == history["base"]
    assert at_head["revision"] == history["head"]
    ids = {
        n: {i["key"]: i["newIdentity"] for i in p["instances"]}
        for n, p in (("base", at_base), ("head", at_head))
    }
    assert ids["base"]["db@m1"] == ids["head"]["db@m1"]
    assert ids["base"]["api@m1"] != ids["head"]["api@m1"]


def test_unknown_ref(history: dict[str, Any]) -> None:
    done = run_cli("plan", "--ref", "no-such-branch", cwd=history["repo"])
    assert_clean_failure(done)
    assert done.stderr == "error: --ref no-such-branch: no such commit, branch or tag\n"


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A larger repository with the models tree in ops/models, and a branch `broken`."""
    files = {f"ops/models/{rel}": text for rel, text in basic_files().items()}
    files["README.md"] = "an application repository\n"
    files["src/main.py"] = "print('hi')\n"
    repo = make_repo(tmp_path_factory.mktemp("nested") / "monorepo", files)
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "broken")
    commit(repo, {"ops/models/distribution.yaml": "distribution:\n  db: [nowhere]\n"}, "bad")
    git(repo, "checkout", "-q", "main")
    return {"repo": repo, "head": head, "outside": tmp_path_factory.mktemp("elsewhere")}


def test_models_tree_in_a_subfolder(nested: dict[str, Any]) -> None:
    repo: Path = nested["repo"]
    runs = run_parallel(
        ["--path", "ops/models", "plan", "--format", "json"],
        ["--repo", str(repo / "ops" / "models"), "plan", "--format", "json"],
        ["--repo", str(repo / "ops"), "--path", "models", "plan", "--format", "json"],
        cwd=repo,
    )
    inside = run_cli("plan", "--format", "json", cwd=repo / "ops" / "models")
    for done in [*runs, inside]:
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert plan["revision"] == nested["head"], "commits are those of the enclosing repo"
        assert sorted(actions(plan)) == ALL_INSTANCES
    assert len({done.stdout for done in [*runs, inside]}) == 1


def test_repo_path_inside_a_work_tree_from_elsewhere(nested: dict[str, Any]) -> None:
    done = run_cli(
        "--repo", str(nested["repo"] / "ops" / "models"), "validate", cwd=nested["outside"]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("app: valid")


def test_problems_in_a_subfolder_name_the_path_from_the_repository_root(
    nested: dict[str, Any],
) -> None:
    done = run_cli("--path", "ops/models", "validate", "--ref", "broken", cwd=nested["repo"])
    assert_clean_failure(done)
    assert problem_lines(done.stderr)[0].startswith(
        "ops/models/distribution.yaml:2: distribution.db[0]: unknown machine 'nowhere'"
    )


def test_path_without_models(nested: dict[str, Any]) -> None:
    done = run_cli("--path", "src", "plan", cwd=nested["repo"])
    assert_clean_failure(done)
    assert done.stderr.startswith("error: src/reconciler.yaml: not found in ")


def test_path_to_a_dot_folder(tmp_path: Path) -> None:
    files = {f".models/{rel}": text for rel, text in basic_files().items()}
    files["models/reconciler.yaml"] = "deployments: {other: {models: [x.yaml]}}\n"
    files["models/x.yaml"] = "machines: {}\n"
    repo = make_repo(tmp_path / "repo", files)
    done = run_cli("--path", ".models", "plan", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deployment"] == "app"


# --- remote repositories --------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bare clone whose deployment tracks `release`, which lags behind `main`."""
    root = tmp_path_factory.mktemp("remote")
    config = basic_files()["reconciler.yaml"] + "    branch: release\n"
    source = make_repo(root / "source", basic_files(**{"reconciler.yaml": config}))
    release = git(source, "rev-parse", "HEAD")
    git(source, "branch", "release")
    main = commit(
        source,
        {"distribution.yaml": "distribution:\n  db: [m1]\n  api: [m1]\n  web: [m1, m2]\n"},
        "main: no cron",
    )
    bare = root / "remote.git"
    git(root, "clone", "-q", "--bare", str(source), str(bare))
    return {
        "source": source,
        "bare": bare,
        "url": bare.as_uri(),
        "release": release,
        "main": main,
        "root": root,
    }


def test_remote_url_reads_the_deployments_branch(remote: dict[str, Any], tmp_path: Path) -> None:
    # one after the other; concurrent first runs are tested below
    tracked = plan_json("--repo", remote["url"], cwd=tmp_path)
    assert tracked["revision"] == remote["release"]
    assert "cron@m2" in actions(tracked)
    at_main = plan_json("--repo", remote["url"], "--ref", "main", cwd=tmp_path)
    assert at_main["revision"] == remote["main"]
    assert "cron@m2" not in actions(at_main)
    bare = plan_json("--repo", str(remote["bare"]), cwd=tmp_path)
    assert bare["revision"] == remote["release"], "a bare repository tracks the branch too"
    assert no_state_db(tmp_path)


def test_a_half_made_mirror_is_not_fatal(remote: dict[str, Any], tmp_path: Path) -> None:
    # grey box: where source.mirror() keeps its cache (<state dir>/repos/<sha256(url)[:16]>)
    key = hashlib.sha256(remote["url"].encode()).hexdigest()[:16]
    (tmp_path / ".reconciler" / "repos" / key).mkdir(parents=True)
    done = run_cli("--repo", remote["url"], "plan", cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


def test_local_work_tree_defaults_to_head_not_the_branch(remote: dict[str, Any]) -> None:
    assert plan_json(cwd=remote["source"])["revision"] == remote["main"]


def test_remote_url_sees_new_commits(tmp_path: Path) -> None:
    config = basic_files()["reconciler.yaml"] + "    branch: release\n"
    source = make_repo(
        tmp_path / "source", basic_files(**{"reconciler.yaml": config}), branch="release"
    )
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(source), str(bare))
    work = tmp_path / "work"
    work.mkdir()
    first = plan_json("--repo", bare.as_uri(), cwd=work)["revision"]
    newer = commit(source, {"distribution.yaml": "distribution:\n  db: [m1]\n"}, "only db")
    git(source, "push", "-q", str(bare), "release")
    plan = plan_json("--repo", bare.as_uri(), cwd=work)
    assert first != newer
    assert plan["revision"] == newer
    assert list(actions(plan)) == ["db@m1"]


def test_unreachable_remote(tmp_path: Path) -> None:
    done = run_cli("--repo", (tmp_path / "nothing.git").as_uri(), "plan", cwd=tmp_path)
    assert_clean_failure(done)
    assert done.stderr.startswith(f"error: {(tmp_path / 'nothing.git').as_uri()}: cannot fetch")


# --- the command line -----------------------------------------------------------------


def test_global_options_before_or_after_the_command(history: dict[str, Any]) -> None:
    runs = run_parallel(
        ["plan", "-d", "app", "--format", "json"],
        ["-d", "app", "--format", "json", "plan"],
        ["--format=json", "plan", "--deployment=app"],
        ["plan", "--ref", "HEAD", "--format", "json", "-d", "app"],
        cwd=history["repo"],
    )
    for done in runs:
        assert done.returncode == 0, (done.args, done.stderr)
    assert len({done.stdout for done in runs}) == 1
    assert json.loads(runs[0].stdout)["deployment"] == "app"


def test_attached_short_option_after_the_command(history: dict[str, Any]) -> None:
    done = run_cli("plan", "-dapp", cwd=history["repo"])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [["plan", "--bogus"], ["--bogus", "plan"], ["plan", "extra"], ["frobnicate"]],
    ids=["option-after", "option-before", "extra-argument", "unknown-command"],
)
def test_usage_errors_exit_1_not_2(history: dict[str, Any], args: list[str]) -> None:
    done = run_cli(*args, cwd=history["repo"])
    assert_clean_failure(done)
    assert "Usage: reconciler" in done.stderr
    assert done.stdout == ""


def test_version(tmp_path: Path) -> None:
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reconciler ")


@pytest.fixture(scope="module")
def two_deployments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = (
        "deployments:\n"
        "  app:\n    models: [network.yaml, services.yaml, distribution.yaml]\n"
        "  staging:\n    models: [network.yaml, services.yaml, dist-staging.yaml]\n"
    )
    staging = "distribution:\n  db: [m2]\n  api: [m2]\n"
    files = basic_files(**{"reconciler.yaml": config, "dist-staging.yaml": staging})
    return make_repo(tmp_path_factory.mktemp("two") / "models", files)


def test_more_than_one_deployment_needs_d(two_deployments: Path) -> None:
    for command in ("plan", "graph"):
        done = run_cli(command, cwd=two_deployments)
        assert_clean_failure(done)
        assert done.stderr == (
            "error: this repository defines 2 deployments (app, staging); choose one with -d NAME\n"
        )


def test_d_chooses_the_deployment(two_deployments: Path) -> None:
    staging, unknown = run_parallel(
        ["plan", "-d", "staging", "--format", "json"], ["plan", "-d", "prod"], cwd=two_deployments
    )
    assert staging.returncode == 0, staging.stderr
    plan = json.loads(staging.stdout)
    assert plan["deployment"] == "staging"
    assert sorted(actions(plan)) == ["api@m2", "db@m2"]
    assert_clean_failure(unknown)
    assert unknown.stderr == "error: no deployment 'prod'; the repository defines: app, staging\n"


# --- allocated values and determinism --------------------------------------------------


def ports_in_graph(dot: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r'^\s+"([^"]+)" \[label="[^":]+:(\d+)\\n', dot, re.M)
    }


def test_auto_ports_are_stable(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", basic_files())
    services = basic_files()["services.yaml"]
    assert services is not None
    # a new `port: auto` service that sorts before web, on the same machines
    commit(
        repo,
        {
            "services.yaml": services + "  aaa: {package: tool, command: bin/tool, port: auto}\n",
            "distribution.yaml": basic_files()["distribution.yaml"] + "  aaa: [m1, m2]\n",
        },
        "add aaa",
    )
    first, second, graph_base, against = run_parallel(
        ["plan", "--ref", "HEAD~1", "--format", "json"],
        ["plan", "--ref", "HEAD~1", "--format", "json"],
        ["graph", "--ref", "HEAD~1"],
        ["plan", "--against", "HEAD~1", "--format", "json"],
        cwd=repo,
    )
    assert first.stdout == second.stdout
    ports = ports_in_graph(graph_base.stdout)
    assert ports == {"api@m1": 8100, "web@m1": 8000, "web@m2": 8000}
    plan = json.loads(against.stdout)
    # web's recorded (here: base) port is kept, so web is untouched
    assert actions(plan) == {
        "aaa@m1": "activate",
        "aaa@m2": "activate",
        "api@m1": "keep",
        "cron@m2": "keep",
        "db@m1": "keep",
        "web@m1": "keep",
        "web@m2": "keep",
    }


def test_same_commit_gives_byte_identical_json(history: dict[str, Any], tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(history["repo"]), str(clone))
    runs = run_parallel(
        ["plan", "--format", "json"],
        ["plan", "--format", "json"],
        cwd=history["repo"],
    )
    runs.append(run_cli("plan", "--format", "json", cwd=clone))
    for done in runs:
        assert done.returncode == 0, done.stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    against = run_parallel(
        ["plan", "--against", "base", "--format", "json"],
        ["plan", "--against", "base", "--format", "json"],
        cwd=history["repo"],
    )
    assert against[0].stdout == against[1].stdout
