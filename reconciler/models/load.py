"""Load `reconciler.yaml` and a deployment's model files from a ModelSource.

Read → parse with marks → merge in order → validate the schema → check references →
resolve package `src` trees. Every problem found is reported together, located.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.errors import InvalidModels, Problem, UserError
from reconciler.models.checks import check_model
from reconciler.models.keys import KeyPolicy, Versions, check_keys
from reconciler.models.merge import merge_patch
from reconciler.models.problems import from_validation
from reconciler.models.schema import DEFAULT_CONTAINERS, DeploymentConfig, ModelDocument, RootConfig
from reconciler.models.source import ModelSource, Revision, within_tree
from reconciler.models.yamlmarks import Budget, Marks, load_yaml

CONFIG_FILE = "reconciler.yaml"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Config:
    root: RootConfig
    marks: Marks

    def deployment_names(self) -> list[str]:
        return sorted(self.root.deployments)


@dataclass(frozen=True)
class LoadedDeployment:
    """A deployment's merged, validated model, and where each of its values came from."""

    name: str
    config: DeploymentConfig
    model: ModelDocument
    marks: Marks
    src_trees: dict[str, str | None]  # package → Git tree id of its src (None: no src)
    revision: Revision | None
    label: str  # what it was read from, for messages
    git_dir: str = ""  # the repository, for exporting package sources at build time
    keys: KeyPolicy = field(default_factory=KeyPolicy)  # where the operator lets keys come from
    key_versions: Versions = field(default_factory=dict)  # of the keys readable here


def load_config(source: ModelSource) -> Config:
    file = source.display(CONFIG_FILE)
    raw = source.read(CONFIG_FILE)
    if raw is None:
        raise UserError(
            f"{file}: not found in {source.label}; a models repository has a reconciler.yaml "
            "at its root (create one with `reconciler init DIR`, or point --path at it)"
        )
    data, marks, problems = load_yaml(raw, file)
    if problems:
        raise InvalidModels(problems)
    root = _validate(RootConfig, data, marks, file)
    for name, dep in root.deployments.items():
        for i, rel in enumerate(dep.models):
            if within_tree(rel) is None:
                line = marks.get(("deployments", name, "models", i), (file, 0))[1]
                raise InvalidModels(
                    [
                        Problem(
                            file,
                            line,
                            f"deployments.{name}.models[{i}]",
                            f"{rel!r} is outside the models tree; use a path relative to it",
                        )
                    ]
                )
    return Config(root, marks)


def pick_deployment(config: Config, name: str | None) -> str:
    names = config.deployment_names()
    if name is None:
        if len(names) == 1:
            return names[0]
        raise UserError(
            f"this repository defines {len(names)} deployments "
            f"({', '.join(names)}); choose one with -d NAME"
        )
    if name not in config.root.deployments:
        raise UserError(f"no deployment {name!r}; the repository defines: {', '.join(names)}")
    return name


def load_deployment(
    source: ModelSource, config: Config, name: str, *, keys: KeyPolicy
) -> LoadedDeployment:
    dep = config.root.deployments[name]
    config_file = source.display(CONFIG_FILE)
    merged: dict[str, Any] = {}
    marks: Marks = {}
    problems: list[Problem] = []
    budget = Budget()  # shared: the files of a deployment are bounded together
    for i, rel in enumerate(dep.models):
        raw = source.read(rel)
        file = source.display(rel)
        if raw is None:
            line = config.marks.get(("deployments", name, "models", i), (config_file, 0))[1]
            problems.append(
                Problem(
                    config_file,
                    line,
                    f"deployments.{name}.models[{i}]",
                    f"{file}: no such file in {source.label}",
                )
            )
            continue
        data, file_marks, file_problems = load_yaml(raw, file, budget)
        problems += file_problems
        if budget.spent:
            break  # said once, for the file that went over
        if file_problems:
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(
                Problem(
                    file,
                    1,
                    "",
                    "a model file must be a mapping with any of the "
                    "keys description, machines, packages, services, distribution",
                )
            )
            continue
        _seed_containers(merged, data)
        merged = merge_patch(merged, data)
        marks.update(file_marks)
    if problems:
        raise InvalidModels(problems)
    machines = merged.get("machines")
    for machine in machines.values() if isinstance(machines, dict) else ():
        if isinstance(machine, dict) and "containers" not in machine:
            machine["containers"] = copy.deepcopy(DEFAULT_CONTAINERS)
    first_file = source.display(dep.models[0])
    model = _validate(ModelDocument, merged, marks, first_file)
    problems = check_model(model, marks, first_file)
    key_problems, key_versions = check_keys(model, marks, keys, name, first_file)
    problems += key_problems
    src_trees = _src_trees(source, model, marks, problems, first_file)
    if problems:
        raise InvalidModels(problems)
    return LoadedDeployment(
        name,
        dep,
        model,
        marks,
        src_trees,
        source.revision,
        source.label,
        str(source.repo.git_dir),
        keys,
        key_versions,
    )


def _seed_containers(merged: dict[str, Any], patch: dict[str, Any]) -> None:
    """Containers merge over the defaults, so `name: null` can remove a default one."""
    machines = patch.get("machines")
    if not isinstance(machines, dict):
        return
    for name, machine in machines.items():
        if isinstance(machine, dict) and isinstance(machine.get("containers"), dict):
            target = merged.setdefault("machines", {})
            if not isinstance(target, dict):
                return
            entry = target.setdefault(name, {})
            if isinstance(entry, dict) and "containers" not in entry:
                entry["containers"] = copy.deepcopy(DEFAULT_CONTAINERS)


def _validate(cls: type[M], data: Any, marks: Marks, file: str) -> M:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise InvalidModels(from_validation(e, data, marks, cls, file)) from None


def _src_trees(
    source: ModelSource,
    model: ModelDocument,
    marks: Marks,
    problems: list[Problem],
    default_file: str,
) -> dict[str, str | None]:
    wanted = {
        name: rel
        for name, p in model.packages.items()
        if p.src is not None and (rel := within_tree(p.src)) is not None
    }
    entries = source.entries(sorted(set(wanted.values())))
    trees: dict[str, str | None] = {name: None for name in model.packages}
    for name, rel in wanted.items():
        entry = entries.get(rel)
        if entry is not None and entry.kind == "tree":
            trees[name] = entry.id
            continue
        file, line = marks.get(("packages", name, "src"), (default_file, 0))
        what = "is a file, not a folder" if entry else f"does not exist in {source.label}"
        problems.append(
            Problem(
                file,
                line,
                f"packages.{name}.src",
                f"{source.display(rel)} {what}; src names a folder of the models tree",
            )
        )
    return trees
