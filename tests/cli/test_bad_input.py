"""SPEC §6 bad input: each names file, line and key, exits 1, and changes nothing.

Every case is one edit away from VALID below, and is run through both `validate` and
`plan`; neither may print a traceback, create a state DB or touch the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import (
    RECONCILER,
    clean_env,
    commit,
    git,
    make_repo,
    run_cli,
    run_parallel,
    write_files,
)

from .conftest import (
    SCRIPT,
    assert_clean_failure,
    no_state_db,
    problem_lines,
)

RECONCILER_YAML = """\
deployments:
  app:
    models: [models.yaml]
"""

# line numbers are what the cases below refer to
VALID = """\
machines:
  m1:
    deployment: {targetEnv: local}
  m2:
    deployment: {targetEnv: local}
packages:
  app: {src: pkgs/app}
  db: {src: pkgs/db}
services:
  db:
    package: db
    type: sqlite-database
  app:
    package: app
    command: bin/app
    port: 8080
    dependsOn: [db]
distribution:
  db: [m1]
  app: [m1]
"""


def edit(old: str, new: str, text: str = VALID) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def repo_with(tmp_path: Path, models: str, config: str = RECONCILER_YAML) -> Path:
    return make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": config,
            "models.yaml": models,
            "pkgs/app/bin/app": SCRIPT,
            "pkgs/db/schema.sql": "CREATE TABLE t (x INTEGER);\n",
        },
    )


def rejected(repo: Path, *commands: str) -> list[list[str]]:
    """Run each command (default: validate and plan); all must fail cleanly and leave
    the repository and the state untouched. Returns each run's problem lines."""
    head = git(repo, "rev-parse", "HEAD")
    seen = []
    runs = run_parallel(*([c] for c in commands or ("validate", "plan")), cwd=repo)
    for done in runs:
        assert_clean_failure(done)
        assert done.stdout == ""
        lines = problem_lines(done.stderr)
        n = len(lines)
        tail = done.stderr.splitlines()[-1]
        assert re.fullmatch(rf"{n} problems?( in [a-z0-9, -]+)?; nothing was changed\.", tail)
        seen.append(lines)
    assert no_state_db(repo)
    assert not (repo / ".reconciler").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == head
    assert all(lines == seen[0] for lines in seen), "validate and plan report the same"
    return seen


def the_problem(repo: Path) -> str:
    """The single problem reported (by validate and plan alike)."""
    lines = rejected(repo)[0]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_base_model_is_valid(tmp_path: Path) -> None:
    done = run_cli("validate", cwd=repo_with(tmp_path, VALID))
    assert done.returncode == 0, done.stderr


CASES = [
    pytest.param(
        edit(
            "    deployment: {targetEnv: local}\n  m2:",
            "    deployment: {targetEnv: local}\n   packages: []\n  m2:",
        ),
        "models.yaml:4: invalid YAML: ",
        "did not find expected key",
        id="malformed-yaml",
    ),
    pytest.param(
        edit("packages:\n", "  m1:\n    deployment: {targetEnv: local}\npackages:\n"),
        "models.yaml:6: machines.m1: ",
        "duplicate key (first defined on line 2)",
        id="duplicate-key",
    ),
    pytest.param(
        edit("  m1:\n", "  m1:\n    colour: red\n"),
        "models.yaml:3: machines.m1.colour: ",
        "unknown key 'colour'; expected one of: capacity, containers, deployment, packages, "
        "properties",
        id="unknown-key",
    ),
    pytest.param(
        edit("  m2:\n", "  Web_2:\n"),
        "models.yaml:4: machines.Web_2: ",
        "invalid name 'Web_2'",
        id="bad-name",
    ),
    pytest.param(
        edit("    package: app\n", "    package: nope\n"),
        "models.yaml:14: services.app.package: ",
        "unknown package 'nope'; known: app, db",
        id="unknown-package",
    ),
    pytest.param(
        edit("  app: [m1]", "  app: [m3]"),
        "models.yaml:20: distribution.app[0]: ",
        "unknown machine 'm3'; known: m1, m2",
        id="unknown-machine",
    ),
    pytest.param(
        edit("    type: sqlite-database\n", "    type: sqlite-database\n    dependsOn: [app]\n"),
        "models.yaml:18: services.app.dependsOn: ",
        "ordering cycle: app -> db -> app",
        id="dependsOn-cycle",
    ),
    pytest.param(
        edit(
            "    type: sqlite-database\n", "    type: sqlite-database\n    activatesAfter: [app]\n"
        ),
        "models.yaml:18: services.app.dependsOn: ",
        "ordering cycle",
        id="activatesAfter-cycle",
    ),
    pytest.param(
        edit("{src: pkgs/app}", "{src: pkgs/nothere}"),
        "models.yaml:7: packages.app.src: ",
        "pkgs/nothere does not exist in",
        id="missing-src-folder",
    ),
    pytest.param(
        edit("{src: pkgs/app}", "{src: pkgs/app/bin/app}"),
        "models.yaml:7: packages.app.src: ",
        "pkgs/app/bin/app is a file, not a folder",
        id="src-is-a-file",
    ),
    pytest.param(
        edit("  app: [m1]", "  app: [m1, m2]"),
        "models.yaml:17: services.app.dependsOn[0]: ",
        "sqlite-database db is not on m2, where app runs",
        id="sqlite-database-from-another-machine",
    ),
    pytest.param(
        edit(
            "    dependsOn: [db]\n",
            "    dependsOn: [db]\n  a-b: {package: app, command: x}\n"
            "  a_b: {package: app, command: x}\n",
        ),
        "models.yaml:19: services.a_b: ",
        "name clashes with 'a-b': both become the environment-variable prefix A_B",
        id="env-prefix-clash",
    ),
    pytest.param(
        edit(
            "  m1:\n    deployment: {targetEnv: local}\n",
            "  m1:\n    deployment:\n      targetEnv: local\n"
            "      ec2: {region: us-east-1, ami: ami-1}\n",
        ),
        "models.yaml:5: machines.m1.deployment.ec2: ",
        "does not belong on a machine with targetEnv local",
        id="block-for-another-targetEnv",
    ),
    pytest.param(
        edit("    port: 8080\n", "    port: 8080\n    env: {LOG: info, PORT: '9000'}\n"),
        "models.yaml:17: services.app.env.PORT: ",
        "PORT clashes with a variable reconciler sets for the service",
        id="env-clashes-with-PORT",
    ),
    pytest.param(
        edit("    port: 8080\n", "    port: 8080\n    env:\n      DB_PATH: /tmp/x\n"),
        "models.yaml:18: services.app.env.DB_PATH: ",
        "DB_PATH clashes with a variable reconciler sets",
        id="env-clashes-with-dependency-variable",
    ),
    pytest.param(
        edit("  app: [m1]", "  app: [m1]\n  ghost: [m1]"),
        "models.yaml:21: distribution.ghost: ",
        "unknown service 'ghost'",
        id="unknown-service-in-distribution",
    ),
    pytest.param(
        edit("  db: [m1]\n", ""),
        "models.yaml:17: services.app.dependsOn[0]: ",
        "app needs db, which is not deployed anywhere",
        id="dependency-not-deployed",
    ),
    pytest.param(
        edit("{targetEnv: local}\n  m2", "{targetEnv: docker}\n  m2"),
        "models.yaml:3: machines.m1.deployment.targetEnv: ",
        "expected 'ssh', 'local', 'container' or 'ec2'; got 'docker'",
        id="bad-targetEnv",
    ),
    pytest.param(
        edit("    port: 8080\n", "    port: 70000\n"),
        "models.yaml:16: services.app.port: ",
        "port must be a number from 1 to 65535, or auto; got 70000",
        id="bad-port",
    ),
    pytest.param(
        edit(
            "machines:\n  m1:\n    deployment: {targetEnv: local}\n"
            "  m2:\n    deployment: {targetEnv: local}\n",
            "machines: [m1]\n",
        ),
        "models.yaml:1: machines: ",
        "expected a mapping (key: value), got a list",
        id="section-is-a-list",
    ),
    pytest.param(
        edit("    port: 8080\n", '    port: 8080\n    env: {LOG: "a\\0b"}\n'),
        "models.yaml:17: services.app.env.LOG: ",
        "contains a NUL character",
        id="env-value-with-NUL",
    ),
    pytest.param(
        edit(
            "  m1:\n    deployment: {targetEnv: local}",
            "  m1:\n    deployment: {targetEnv: local, stateDir: /etc}",
        ),
        "models.yaml:3: machines.m1.deployment.stateDir: ",
        "stateDir '/etc' is a system folder",
        id="stateDir-a-system-folder",
    ),
    pytest.param(
        VALID + "description: " + "[" * 990 + "]" * 990 + "\n",
        "models.yaml:21: description: ",
        "nested more than 64 levels deep",
        id="nested-990-deep",
    ),
    pytest.param(
        "- machines\n",
        "models.yaml:1: ",
        "a model file must be a mapping",
        id="model-file-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("models", "prefix", "phrase"), CASES)
def test_bad_input(tmp_path: Path, models: str, prefix: str, phrase: str) -> None:
    """Through `plan` (the command that could write state); validate: the test below."""
    [lines] = rejected(repo_with(tmp_path, models), "plan")
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix), lines[0]
    assert phrase in lines[0].removeprefix(prefix), lines[0]


def test_validate_reports_every_bad_deployment_together(tmp_path: Path) -> None:
    """All the cases above as deployments of one repository, each with its own model file:
    one `validate` reports each case's problem, located in that case's file."""
    config = "deployments:\n" + "".join(
        f"  case{n:02}:\n    models: [case{n:02}.yaml]\n" for n in range(len(CASES))
    )
    files = {f"case{n:02}.yaml": case.values[0] for n, case in enumerate(CASES)}
    repo = repo_with(tmp_path, VALID, config)
    write_files(repo, files)
    commit(repo, {}, "one deployment per case")
    [lines] = rejected(repo, "validate")
    assert len(lines) == len(CASES), lines
    for n, case in enumerate(CASES):
        _, prefix, phrase = case.values
        assert isinstance(prefix, str) and isinstance(phrase, str)
        prefix = prefix.replace("models.yaml", f"case{n:02}.yaml")
        mine = [line for line in lines if line.startswith(prefix)]
        assert len(mine) == 1, (case.id, prefix, lines)
        assert phrase in mine[0], (case.id, mine[0])


def test_port_clash_on_a_machine_names_both_services(tmp_path: Path) -> None:
    models = edit(
        "    dependsOn: [db]\n",
        "    dependsOn: [db]\n  other:\n    package: app\n    command: bin/app\n    port: 8080\n",
    ).replace("app: [m1]", "app: [m1]\n  other: [m1]")
    lines = rejected(repo_with(tmp_path, models))[0]
    assert lines == [
        "models.yaml:16: services.app.port: port 8080 on m1 is also used by other",
        "models.yaml:21: services.other.port: port 8080 on m1 is also used by app",
    ]


def test_same_port_on_different_machines_is_fine(tmp_path: Path) -> None:
    models = edit(
        "    dependsOn: [db]\n",
        "    dependsOn: [db]\n  other:\n    package: app\n    command: bin/app\n    port: 8080\n",
    ).replace("app: [m1]", "app: [m1]\n  other: [m2]")
    done = run_cli("validate", cwd=repo_with(tmp_path, models))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "src",
    [
        "/etc",
        "../outside",
        "pkgs/../../outside",
    ],
)
def test_src_outside_the_models_tree(tmp_path: Path, src: str) -> None:
    repo = repo_with(tmp_path, edit("{src: pkgs/app}", f"{{src: {src}}}"))
    lines = rejected(repo)[0]
    expected = (
        f"models.yaml:7: packages.app.src: {src!r} is outside the models tree; "
        "use a relative folder inside it"
    )
    assert expected in lines


def test_src_outside_the_models_tree_is_one_problem(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, edit("{src: pkgs/app}", "{src: /etc}"))
    assert rejected(repo, "validate")[0] == [
        "models.yaml:7: packages.app.src: '/etc' is outside the models tree; "
        "use a relative folder inside it"
    ]


def test_src_with_a_leading_dot_slash(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, edit("{src: pkgs/app}", "{src: ./pkgs/app}"))
    done = run_cli("validate", cwd=repo)
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr


def test_src_dot_is_not_reported_missing(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, edit("{src: pkgs/app}", "{src: .}"))
    done = run_cli("validate", cwd=repo)
    assert "Traceback" not in done.stderr
    assert "does not exist" not in done.stderr, done.stderr


def test_missing_model_file_listed_in_reconciler_yaml(tmp_path: Path) -> None:
    config = RECONCILER_YAML.replace("[models.yaml]", "[models.yaml, extra.yaml]")
    repo = repo_with(tmp_path, VALID, config)
    sha12 = git(repo, "rev-parse", "HEAD")[:12]
    assert the_problem(repo) == (
        f"reconciler.yaml:3: deployments.app.models[1]: extra.yaml: no such file in {sha12}"
    )


def test_unknown_key_in_reconciler_yaml(tmp_path: Path) -> None:
    config = RECONCILER_YAML + "    brnch: main\n"
    problem = the_problem(repo_with(tmp_path, VALID, config))
    assert problem == (
        "reconciler.yaml:4: deployments.app.brnch: unknown key 'brnch'; expected one of: "
        "allowRewind, autoApply, branch, destroyMachines, failover, interval, models, selfHeal"
    )


def test_problems_in_several_files_are_reported_together(tmp_path: Path) -> None:
    config = RECONCILER_YAML.replace("[models.yaml]", "[models.yaml, more.yaml]")
    repo = make_repo(
        tmp_path / "models",
        {
            "reconciler.yaml": config,
            "models.yaml": "machines:\n  m1: {deployment: {targetEnv: local}}\n  m1: {}\n",
            "more.yaml": "services: [\n",
        },
    )
    lines = rejected(repo)[0]
    assert [line.split(": ", 1)[0] for line in lines] == ["models.yaml:3", "more.yaml:2"]


def test_missing_reconciler_yaml(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "models", {"README": "no models here\n"})
    for command in ("validate", "plan", "graph"):
        done = run_cli(command, cwd=repo)
        assert_clean_failure(done)
        assert done.stderr.startswith("error: reconciler.yaml: not found in "), done.stderr
    assert not (repo / ".reconciler").exists()


@pytest.mark.parametrize(
    "value",
    ["!!python/object/apply:os.system ['touch pwned']", "!!python/object:os.system x"],
)
def test_yaml_python_tags_are_never_constructed(tmp_path: Path, value: str) -> None:
    problem = the_problem(repo_with(tmp_path, VALID + f"description: {value}\n"))
    assert problem.startswith("models.yaml:21: "), problem
    assert not (tmp_path / "models" / "pwned").exists()


# --- issue 13: bad input that gave a traceback or a late failure ----------------------


@pytest.mark.parametrize("depth", [975, 990])
@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_near_the_parsers_limit_is_a_problem_not_a_recursion_error(
    tmp_path: Path, depth: int, style: str
) -> None:
    line = 3  # flow style: all on the line of `properties:`; block style: the 65th level
    if style == "flow":
        deep = "[" * depth + "1" + "]" * depth
        models = edit("  m1:\n", f"  m1:\n    properties: {{deep: {deep}}}\n")
    else:
        line = 65
        deep = "".join(f"{'  ' * (i + 3)}a:\n" for i in range(depth)) + "  " * (depth + 3) + "1\n"
        models = edit("  m1:\n", f"  m1:\n    properties:\n{deep}")
    problem = the_problem(repo_with(tmp_path, models))
    assert problem == (
        f"models.yaml:{line}: machines: nested more than 64 levels deep; a model needs far fewer"
    ), problem


@pytest.mark.parametrize("state_dir", ["/", "/proc", "/proc/self", "/etc", "/srv/../etc", "/x/.."])
def test_state_dir_that_is_not_a_folder_of_its_own(tmp_path: Path, state_dir: str) -> None:
    models = edit(
        "  m1:\n    deployment: {targetEnv: local}",
        f"  m1:\n    deployment: {{targetEnv: local, stateDir: '{state_dir}'}}",
    )
    problem = the_problem(repo_with(tmp_path, models))
    assert problem.startswith("models.yaml:3: machines.m1.deployment.stateDir: stateDir "), problem
    assert "system folder" in problem or "'..' part" in problem, problem


def _bomb(levels: int, name: str) -> str:
    """An anchor of 10 values aliased 10 times per level: 10 ** (levels + 1) values."""
    lines = [f"{name}0: &{name}0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"{name}{i}: &{name}{i} [" + ", ".join([f"*{name}{i - 1}"] * 10) + "]")
    return "\n".join(f"      {line}" for line in lines) + "\n"


def _bomb_file(levels: int, name: str) -> str:
    return f"machines:\n  m2:\n    properties:\n      {name}:\n{_bomb(levels, name)}"


def test_an_alias_bomb_split_over_several_files_is_bounded_together(tmp_path: Path) -> None:
    """Each file alone is under any per-file cap and valid; together they are refused,
    quickly and in bounded memory, before anything is compiled."""
    names = [f"b{n}" for n in range(8)]
    config = RECONCILER_YAML.replace(
        "[models.yaml]", "[models.yaml, " + ", ".join(f"{n}.yaml" for n in names) + "]"
    )
    one = RECONCILER_YAML.replace("[models.yaml]", "[models.yaml, b0.yaml]")
    small = {f"{n}.yaml": _bomb_file(4, n) for n in names}  # 100,000 values each
    single = repo_with(tmp_path / "single", VALID, one)
    commit(single, {"b0.yaml": small["b0.yaml"]}, "one bomb")
    assert run_cli("validate", cwd=single).returncode == 0
    repo = repo_with(tmp_path, VALID, config)
    commit(repo, small, "bombs")
    lines = rejected(repo, "validate")[0]
    assert len(lines) == 1, lines
    assert "aliases expand to more than 200,000 values in the deployment's model files" in lines[0]


def test_large_alias_bombs_in_many_files_fail_fast_in_bounded_memory(tmp_path: Path) -> None:
    """Eight files of 1.1 million values each (each under the old 2 million per-file cap)
    took gigabytes; now the first file's aliases are refused, in an address space of 1.5 GB."""
    names = [f"b{n}" for n in range(8)]
    config = RECONCILER_YAML.replace(
        "[models.yaml]", "[models.yaml, " + ", ".join(f"{n}.yaml" for n in names) + "]"
    )
    repo = repo_with(tmp_path, VALID, config)
    commit(repo, {f"{n}.yaml": _bomb_file(5, n) for n in names}, "bombs")
    done = subprocess.run(
        ["bash", "-c", f"ulimit -v 1500000 && exec {RECONCILER} validate"],
        cwd=repo,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert_clean_failure(done)
    assert "b0.yaml:5: machines: aliases expand to more than 200,000 values" in done.stderr
