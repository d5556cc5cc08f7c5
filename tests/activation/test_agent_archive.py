"""The agent as shipped: one zip archive whose bytes (and so its store path) depend only on
the package's sources, that imports nothing but the standard library, run from the store
path by the target's python3, or streamed over stdin to ask without writing anything."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from reconciler.execute.agent_client import (
    PACKAGE,
    SOURCE,
    AgentSession,
    answer_of,
    archive,
    ask,
    ensure_agent,
)
from reconciler.store.local import LocalStore
from reconciler.targets.local import LocalTarget
from tests.activation.agent import AGENT, PYTHON


def test_the_archive_depends_only_on_the_sources(tmp_path: Path) -> None:
    data = archive()
    assert archive() == data
    copy = tmp_path / "agent"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.iterdir():  # other times and permissions: the same bytes
        os.utime(path, (1_000_000_000, 1_000_000_000))
        path.chmod(0o600)
    assert archive(copy) == data
    changed = copy / "request.py"
    changed.write_text(changed.read_text() + "\n# one more line\n")
    assert archive(copy) != data

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) and names[0] == "__main__.py"
    assert f"{PACKAGE}/kinds.py" in names and f"{PACKAGE}/process.py" in names
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o644}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}


def test_the_agent_imports_only_the_standard_library() -> None:
    """Every import written in the package (those inside functions too), and every module
    loaded, with no site-packages and no environment (-I -S)."""
    stdlib = set(sys.stdlib_module_names)
    for path in SOURCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= stdlib, path
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module is not None and node.module.split(".")[0] in stdlib, path
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {AGENT!r})\n"
        f"import {PACKAGE}.protocol, {PACKAGE}.kinds\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [PYTHON, "-I", "-S", "-c", script], capture_output=True, check=True, timeout=30
    )
    top = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert PACKAGE in top
    assert top - {PACKAGE, "__main__"} <= stdlib


def test_store_path_serve_and_ask(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    agent = ensure_agent(store)
    assert agent.path == f"{hashlib.sha256(archive()).hexdigest()[:32]}-reconciler-agent"
    assert sorted(os.listdir(store.dir(agent.path))) == ["agent.pyz"]
    state_dir = tmp_path / "machine"
    (state_dir / "store").mkdir(parents=True)
    shutil.copytree(store.dir(agent.path), state_dir / "store" / agent.path)
    target = LocalTarget("m1", str(state_dir))

    async def talk() -> None:
        session = AgentSession(target, agent.path)
        try:
            lock = {"stateDir": str(state_dir), "owner": "a", "ttl": 60}
            assert (await session.call("lock", lock))["owner"] == "a"
            assert (await session.call("unlock", lock)) == {"released": True}
        finally:
            await session.close()
        before = sorted(p.name for p in state_dir.rglob("*"))
        base = {"stateDir": str(state_dir), "deployment": "d"}
        answers = await ask(target, [("read-manifest", base), ("list-store", base)])
        assert answer_of(answers, "read-manifest") == {}
        assert answer_of(answers, "list-store") == {"paths": {}}  # no .meta: none complete
        assert sorted(p.name for p in state_dir.rglob("*")) == before  # nothing written

    asyncio.run(talk())
