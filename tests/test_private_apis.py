"""Every private use of Lightning, torch, transformers, litdata or jsonargparse is listed.

The scan reads the source tree by AST and finds:
- imports from a module with a ``_`` component (``torch.distributed._tools``), of a
  ``_`` name, or from a module known to be internal (``INTERNAL_MODULES``);
- ``self._x`` / ``super()._x`` and private method definitions in a class whose
  library base class owns ``_x`` (defines it, or its source reads ``self._x``);
- ``obj._x`` on any other object (``getattr(obj, "_x")`` too) where the project
  itself binds no ``_x`` anywhere (so ``_x`` belongs to someone else).

Each finding must have a row in docs/private_apis.md (file:function and the name),
and each row a finding, so the table stays true both ways. Limits: a private name
the project also binds for itself is not reported on other objects, and an
instance attribute a library sets outside its class source is not seen.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "docs" / "private_apis.md"
LIBRARIES = ("lightning", "torch", "transformers", "litdata", "jsonargparse")
# Internal modules whose names carry no underscore.
INTERNAL_MODULES = ("transformers.utils.output_capturing",)
# Public by convention although spelled with an underscore (namedtuple's API).
PUBLIC_UNDERSCORE = {"_asdict", "_replace", "_fields", "_make"}


def source_files(root: Path = REPO) -> list[Path]:
    """The project's Python sources: the core, the tools, the CLI and the benches."""
    files = [*(root / "jreg_lightning").rglob("*.py"), *(root / "jreg_tools").rglob("*.py")]
    files += [*(root / "bench").rglob("*.py"), root / "cli.py"]
    return sorted(path for path in files if path.is_file())


def is_private(name: str) -> bool:
    """A single-underscore name: ``_x``, not ``__x__``, ``__x`` or ``_``."""
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _library_module(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


@dataclass(frozen=True)
class Finding:
    """One private use: where (``file:function``), which name, and the line."""

    where: str
    name: str
    line: int

    def __str__(self) -> str:
        return f"{self.where} (line {self.line}): {self.name}"


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


@cache
def _library_owns(cls: type, name: str) -> bool:
    """Whether a library class defines ``name`` or its source reads ``self.<name>``."""
    if not _library_module(getattr(cls, "__module__", "") or ""):
        return False
    if name in vars(cls):
        return True
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"\bself\.{re.escape(name)}\b", source) is not None


def _class_object(path: Path, root: Path, qualname: str) -> type | None:
    """The class ``qualname`` of the source file ``path``, imported (None if it cannot be)."""
    name = _module_name(path, root)
    if name in sys.modules:
        module = sys.modules[name]
    elif root == REPO and (path.parent / "__init__.py").is_file():
        module = importlib.import_module(name)
    else:
        spec = importlib.util.spec_from_file_location(f"private_scan.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _library_bases(cls: type | None) -> list[type]:
    return [base for base in (cls.__mro__[1:] if cls else ()) if _library_module(base.__module__)]


class _Scanner(ast.NodeVisitor):
    """Walks one file, keeping the enclosing class and function for each use."""

    def __init__(self, path: Path, root: Path, own_names: set[str]) -> None:
        self.path, self.root, self.own_names = path, root, own_names
        self.scope: list[str] = []
        self.classes: list[type | None] = []
        self.found: list[Finding] = []
        self.library_self_names: set[str] = set()

    def _add(self, name: str, node: ast.AST) -> None:
        function = ".".join(self.scope) or "<module>"
        where = f"{self.path.relative_to(self.root).as_posix()}:{function}"
        self.found.append(Finding(where, name, node.lineno))

    def _owned_by_library(self, name: str) -> bool:
        cls = self.classes[-1] if self.classes else None
        return any(_library_owns(base, name) for base in _library_bases(cls))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.classes.append(_class_object(self.path, self.root, ".".join(self.scope)))
        self.generic_visit(node)
        self.classes.pop()
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        if is_private(node.name) and len(self.scope) >= 2 and self._owned_by_library(node.name):
            self._add(node.name, node)  # overrides a library's private method
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if _library_module(alias.name) and (
                any(map(is_private, parts)) or alias.name in INTERNAL_MODULES
            ):
                self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not _library_module(module):
            return
        if any(map(is_private, module.split("."))) or module in INTERNAL_MODULES:
            self._add(module, node)
        for alias in node.names:
            if is_private(alias.name):
                self._add(f"{module}.{alias.name}", node)

    def _attribute(self, owner: ast.expr, name: str, node: ast.AST) -> None:
        if not is_private(name) or name in PUBLIC_UNDERSCORE:
            return
        on_self = (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or (
            isinstance(owner, ast.Call)
            and isinstance(owner.func, ast.Name)
            and owner.func.id == "super"
        )
        if on_self:
            if self._owned_by_library(name):
                self.library_self_names.add(name)
                self._add(name, node)
        elif name not in self.own_names:
            self._add(name, node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._attribute(node.value, node.attr, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self._attribute(node.args[0], node.args[1].value, node)
        self.generic_visit(node)


def own_private_names(files: list[Path]) -> set[str]:
    """Private names the project binds: functions, classes, variables, arguments, attributes.

    ``self._x = ...`` counts as the project's own unless a library base class owns
    ``_x``; that case is reported on ``self`` instead.
    """
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
    return {name for name in names if is_private(name)}


def scan(files: list[Path], root: Path = REPO) -> list[Finding]:
    """Every private use of the libraries in ``files`` (see the module docstring)."""
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in files}
    own = own_private_names(files)
    for _ in range(2):
        found: list[Finding] = []
        library_self_names: set[str] = set()
        for path, tree in trees.items():
            scanner = _Scanner(path, root, own)
            scanner.visit(tree)
            found += scanner.found
            library_self_names |= scanner.library_self_names
        # A library's attribute stored on self is not the project's own name.
        if not library_self_names & own:
            break
        own -= library_self_names
    return sorted(set(found), key=lambda f: (f.where, f.line, f.name))


def listed(table: Path = TABLE) -> set[tuple[str, str]]:
    """``(file:function, name)`` of every row of the table in ``docs/private_apis.md``."""
    rows = set()
    for line in table.read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and ":" in cells[0] and not set(cells[0]) <= {"-", ":"}:
            rows.add((cells[0], cells[1]))
    return rows


def unlisted(found: list[Finding], rows: set[tuple[str, str]]) -> list[Finding]:
    """The findings without a row."""
    return [f for f in found if (f.where, f.name) not in rows]


def test_every_private_use_is_listed():
    missing = unlisted(scan(source_files()), listed())
    assert not missing, (
        "private uses missing from docs/private_apis.md (use a public API, or add a row):\n"
        + "\n".join(map(str, missing))
    )


def test_every_listed_use_exists():
    found = {(f.where, f.name) for f in scan(source_files())}
    stale = sorted(listed() - found)
    assert not stale, f"rows of docs/private_apis.md that the scan no longer finds: {stale}"


def test_an_unlisted_private_use_fails_the_check(tmp_path):
    package = tmp_path / "jreg_lightning"
    package.mkdir()
    bad = package / "bad.py"
    bad.write_text(
        "import lightning as L\n"
        "from torch.distributed._tools.mem_tracker import MemTracker\n"
        "from transformers.utils.output_capturing import OutputRecorder\n"
        "from lightning.pytorch.callbacks import ModelCheckpoint\n"
        "\n"
        "class Mine(ModelCheckpoint):\n"
        "    def __init__(self):\n"
        "        self._own = 1\n"
        "    def _save_checkpoint(self, trainer, path):\n"
        "        return self._own, self._last_global_step_saved\n"
        "\n"
        "def on_end(trainer, callback):\n"
        "    callback._last_global_step_saved = 0\n"
        "    trainer._logger_connector.log_metrics({})\n"
        "    return getattr(callback, '_last_checkpoint_saved', '')\n"
    )
    found = scan([bad], root=tmp_path)
    names = {(f.where, f.name) for f in found}
    assert names == {
        ("jreg_lightning/bad.py:<module>", "torch.distributed._tools.mem_tracker"),
        ("jreg_lightning/bad.py:<module>", "transformers.utils.output_capturing"),
        ("jreg_lightning/bad.py:Mine._save_checkpoint", "_save_checkpoint"),
        ("jreg_lightning/bad.py:Mine._save_checkpoint", "_last_global_step_saved"),
        ("jreg_lightning/bad.py:on_end", "_last_global_step_saved"),
        ("jreg_lightning/bad.py:on_end", "_logger_connector"),
        ("jreg_lightning/bad.py:on_end", "_last_checkpoint_saved"),
    }
    rows = {(f.where, f.name) for f in found if f.name != "_logger_connector"}
    assert [f.name for f in unlisted(found, rows)] == ["_logger_connector"]
    table = tmp_path / "private_apis.md"
    table.write_text(
        "| where | name | version | why | breaks |\n|---|---|---|---|---|\n"
        "| `jreg_lightning/bad.py:on_end` | `_logger_connector` | 2.6.6 | none | a test |\n"
    )
    assert ("jreg_lightning/bad.py:on_end", "_logger_connector") in listed(table)
