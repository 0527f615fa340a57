"""Code as provenance: the source files a workflow script's results depend on.

A rule's results depend on its CLI in ``workflow_scripts/`` and on every ``qure`` module
that CLI imports, directly or through other modules, at the top or inside a function
(lazy imports run too), with each module's parent packages (their ``__init__`` runs on
import) and the package data beside those modules (``paper_results.yaml``,
``sources.yaml``, the config schema). The body of ``if TYPE_CHECKING:`` never runs and
is skipped. The graph is read statically from the source (nothing is imported), so it is
cheap enough to compute when Snakemake parses the workflow and when ``dvc.yaml`` is
generated.

Every path is relative to the repository root given by the caller (the working
directory of the workflow): ``src/qure/...`` and ``workflow_scripts/...``.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PROJECT_PACKAGE = "qure"
SCRIPTS = "workflow_scripts"
SRC = "src"

#: A rule header and the workflow script its shell command runs.
RULE_RE = re.compile(r"^(?P<indent>[ \t]*)rule(?:[ \t]+(?P<name>\w+))?[ \t]*:")
NAME_RE = re.compile(r"^[ \t]+name:[ \t]*(?P<value>.+?)\s*$")
SCRIPT_RE = re.compile(r"\bpython3?[ \t]+workflow_scripts/(?P<script>\w+)\.py\b")


@functools.lru_cache(maxsize=16384)
def module_file(root: Path, module: str) -> Path | None:
    """The source file of a project module (``qure.a.b``) or of a sibling workflow
    script (``train``), or None for anything else."""
    parts = module.split(".")
    if parts[0] == PROJECT_PACKAGE:
        base = root / SRC / Path(*parts)
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None
    script = root / SCRIPTS / f"{module}.py"
    return script if len(parts) == 1 and script.is_file() else None


def module_name(root: Path, path: Path) -> str:
    src = root / SRC
    if not path.is_relative_to(src):  # a workflow script
        return path.stem
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(root: Path, path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (functions included; the body
    of ``if TYPE_CHECKING:`` is skipped)."""
    return set(_imports(root, path))


def _imported_by(root: Path, node: ast.AST, package: str) -> set[str]:
    """The absolute module names one ``import`` / ``from ... import`` statement imports
    (relative imports resolved against ``package``); empty for any other node."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    # `from pkg import sub` imports the submodule when there is one.
    return {base} | {f"{base}.{a.name}" for a in node.names
                     if module_file(root, f"{base}.{a.name}")}


@functools.lru_cache(maxsize=4096)
def _imports(root: Path, path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        found.update(_imported_by(root, node, package))
        # Imports are statements: only statement bodies are walked, not expressions.
        for field in _BODIES:
            for child in getattr(node, field, ()):
                visit(child)

    visit(tree)
    return frozenset(found)


#: The fields of statement nodes that hold nested statements (try/match included).
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def reached_files(root: str | Path, script: str | Path) -> tuple[list[Path], dict[str, str]]:
    """The project files ``script`` runs (itself, the modules it reaches, their parent
    packages) and the third-party top-level modules they import (module -> the first
    project file importing it)."""
    root = Path(root).resolve()
    start = (root / script).resolve()
    todo, seen = [start], set()
    external: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in sorted(imported_modules(root, path)):
            parts = module.split(".")
            if parts[0] == PROJECT_PACKAGE or module_file(root, module):
                for i in range(1, len(parts) + 1):
                    if (found := module_file(root, ".".join(parts[:i]))) is not None:
                        todo.append(found)
            elif parts[0]:
                external.setdefault(parts[0], str(path.relative_to(root)))
    return sorted(seen), external


def code_files(root: str | Path, script: str | Path) -> list[str]:
    """What ``script``'s results depend on as code: the script and every project module
    it reaches, as sorted paths relative to ``root`` (read once per process: the files
    are parsed, not imported, and a workflow parse reads each module once)."""
    return list(_code_files(Path(root).resolve(), str(script)))


#: Package data the modules read (importlib.resources): part of their code.
DATA_SUFFIXES = (".yaml", ".yml", ".json")


@functools.lru_cache(maxsize=256)
def _code_files(root: Path, script: str) -> tuple[str, ...]:
    files, _ = reached_files(root, script)
    found = set(files)
    src = root / SRC
    for folder in {f.parent for f in files if f.is_relative_to(src)}:
        found.update(p for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file())
    return tuple(sorted(str(f.relative_to(root)) for f in found))


def rule_blocks(text: str):
    """(name, body lines) of each rule of a ``.smk`` text; a rule ends at the next line
    indented no deeper than its header."""
    lines = text.splitlines()
    starts = [(i, m) for i, line in enumerate(lines) if (m := RULE_RE.match(line))]
    for i, match in starts:
        indent = len(match["indent"].expandtabs())
        body = []
        for line in lines[i + 1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        name = match["name"]
        if name is None:  # `rule:` with a `name:` directive (rules made in a loop)
            found = [n["value"] for line in body if (n := NAME_RE.match(line))]
            name = found[0] if found else f"<anonymous rule at line {i + 1}>"
        yield name, body


def rule_scripts(smk: str | Path) -> dict[str, str]:
    """Rule name -> the workflow script its shell command runs, for one ``.smk`` file
    (rules without a script are left out)."""
    out: dict[str, str] = {}
    for name, body in rule_blocks(Path(smk).read_text(encoding="utf-8")):
        scripts = {m["script"] for m in SCRIPT_RE.finditer("\n".join(body))}
        if len(scripts) > 1:
            raise ValueError(f"{smk}: rule {name} runs several workflow scripts: "
                             f"{', '.join(sorted(scripts))}")
        if scripts:
            out[name] = f"{SCRIPTS}/{scripts.pop()}.py"
    return out


# --- the package's import graph ---------------------------------------------------------------


def module_level_imports(root: str | Path, path: Path) -> set[str]:
    """Project modules ``path`` imports when it is imported: the statements at module
    level (and in module-level ``if``/``try`` blocks, except ``if TYPE_CHECKING:``),
    not those inside functions, which run later."""
    root = Path(root).resolve()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody
                      + [s for h in node.handlers for s in h.body])
            else:
                found.update(_imported_by(root, node, package))

    visit(tree.body)
    return {m for m in found if m.split(".")[0] == PROJECT_PACKAGE and module_file(root, m)}


def import_cycles(root: str | Path, package: str = PROJECT_PACKAGE) -> list[list[str]]:
    """Every cycle of module-level imports among ``package``'s modules (each as the list
    of modules along it, first repeated at the end); empty when there is none."""
    root = Path(root).resolve()
    folder = root / SRC / package
    graph = {module_name(root, p): module_level_imports(root, p)
             for p in sorted(folder.rglob("*.py"))}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            walk(module)
    return cycles
