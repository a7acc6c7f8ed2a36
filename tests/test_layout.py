"""The fork promise: the training core (``jreg_lightning``) never imports the tools
(``jreg_tools``), and with the tools deleted it still imports and trains."""

from __future__ import annotations

import ast
import csv
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli_run import tiny_override

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "jreg_lightning"
TOOLS = "jreg_tools"


def _tool_references(path: Path, root: Path = REPO) -> list[str]:
    """Every import of, or string naming, a ``jreg_tools`` module in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("jreg_tools..."), a class_path written in code
            names = [node.value] if node.value.startswith(TOOLS) else []
        found += [
            f"{path.relative_to(root)}:{node.lineno}: {name}"
            for name in names
            if name == TOOLS or name.startswith(f"{TOOLS}.")
        ]
    return found


def test_the_core_never_imports_the_tools():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 20
    offenders = [ref for path in modules for ref in _tool_references(path)]
    assert not offenders, "the core reaches into jreg_tools:\n" + "\n".join(offenders)


def test_the_contract_check_sees_a_tool_import(tmp_path):
    module = tmp_path / "jreg_lightning" / "bad.py"
    module.parent.mkdir()
    module.write_text(
        "import importlib\n"
        "def f():\n"
        "    from jreg_tools.study import runner\n"
        "    return importlib.import_module('jreg_tools.plan')\n"
    )
    found = _tool_references(module, root=tmp_path)
    assert [ref.split(": ")[1] for ref in found] == ["jreg_tools.study", "jreg_tools.plan"]


# Refuses every jreg_tools import (the editable install would otherwise still find the
# repo's copy), then runs the fork's cli.py as `python cli.py ...` would.
_FORK_RUNNER = """
import importlib.abc, runpy, sys

class NoTools(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jreg_tools" or name.startswith("jreg_tools."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTools())
sys.path.insert(0, ".")
sys.argv = ["cli.py", *sys.argv[1:]]
try:
    runpy.run_path("cli.py", run_name="__main__")
finally:
    import jreg_lightning
    print("core:", jreg_lightning.__file__)
"""


def test_the_core_trains_with_the_tools_deleted(tmp_path, token_shards):
    fork = tmp_path / "fork"
    no_cache = shutil.ignore_patterns("__pycache__")
    shutil.copytree(CORE, fork / "jreg_lightning", ignore=no_cache)
    shutil.copytree(REPO / "configs", fork / "configs")
    shutil.copy(REPO / "cli.py", fork / "cli.py")
    run_dir = tmp_path / "run"
    override = tiny_override(run_dir, token_shards, max_steps=3)
    command = ["fit", "--config", "configs/tiny_jreg.yaml", "--config", str(override)]
    done = subprocess.run(
        [sys.executable, "-c", _FORK_RUNNER, *command],
        cwd=fork,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"core: {fork / 'jreg_lightning' / '__init__.py'}" in done.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with open(next(run_dir.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    steps = {int(row["step"]) for row in rows if row.get("train/loss")}
    assert max(steps) >= 1
    assert any(row.get("val/jump_strength") for row in rows)
    assert next(run_dir.rglob("config.yaml"), None) is not None


def test_the_fork_runner_blocks_the_tools(tmp_path):
    (tmp_path / "cli.py").write_text("import jreg_tools.cli\n")
    done = subprocess.run(
        [sys.executable, "-c", _FORK_RUNNER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "ModuleNotFoundError: No module named 'jreg_tools'" in done.stderr
