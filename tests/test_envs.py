"""Every rule's conda env provides what its workflow script imports (snakemake --use-conda).

Static, no Snakemake run and no env build: the rules are read as text from rules/*.smk,
each rule's ``python workflow_scripts/X.py`` is followed through its imports (AST, every
import including those inside functions, transitively through the ``qure`` package and
the ``__init__`` modules on the way), the third-party top-level modules are mapped to
distributions, and those are looked up in what the rule's env yaml installs: its conda
and pip lists, the project extras of a ``-e ..[extra,...]`` entry (pyproject.toml,
resolving ``qure-repro[...]`` self-references), and the unconditional requirements of
all those distributions as far as this interpreter has them installed.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
SCRIPTS = ROOT / "workflow_scripts"
SRC = ROOT / "src"
PROJECT_PACKAGE = "qure"

# Top-level modules whose distribution packages_distributions() cannot tell when the
# distribution is not installed here.
MODULE_DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "bs4": "beautifulsoup4",
    "google": "protobuf",
    "dateutil": "python-dateutil",
}
# conda-forge names that differ from the PyPI distribution.
CONDA_ALIASES = {"pytorch": "torch", "pytorch-cpu": "torch", "pytorch-gpu": "torch"}

RULE_RE = re.compile(r"^(?P<indent>[ \t]*)rule(?:[ \t]+(?P<name>\w+))?[ \t]*:")
NAME_RE = re.compile(r"^[ \t]+name:[ \t]*(?P<value>.+?)\s*$")
CONDA_RE = re.compile(r"^[ \t]+conda:[ \t]*(?P<inline>\S.*)?$")
QUOTED_RE = re.compile(r"""^\s*(?:f?r?)(["'])(?P<path>[^"']+)\1\s*,?\s*$""")
SCRIPT_RE = re.compile(r"\bpython3?[ \t]+workflow_scripts/(?P<script>\w+)\.py\b")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    smk: Path
    env: Path | None
    script: Path | None

    @property
    def label(self) -> str:
        return f"{self.smk.name}:{self.name}"


def _rule_blocks(text: str):
    """(name, lines) of each rule; a rule ends at the next line indented no deeper."""
    lines = text.splitlines()
    starts = [(i, m) for i, line in enumerate(lines) if (m := RULE_RE.match(line))]
    for i, m in starts:
        indent = len(m["indent"].expandtabs())
        body = []
        for line in lines[i + 1 :]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        name = m["name"]
        if name is None:  # `rule:` with a `name:` directive (rules made in a loop)
            found = [n["value"] for line in body if (n := NAME_RE.match(line))]
            name = found[0] if found else f"<anonymous rule at line {i + 1}>"
        yield name, body


def parse_rules(smk: Path) -> list[Rule]:
    rules = []
    for name, body in _rule_blocks(smk.read_text(encoding="utf-8")):
        env = None
        for k, line in enumerate(body):
            if m := CONDA_RE.match(line):
                value = m["inline"] or next((x for x in body[k + 1 :] if x.strip()), "")
                q = QUOTED_RE.match(value)
                assert q, f"{smk.name}:{name}: conda: is not a quoted path: {value.strip()!r}"
                env = (smk.parent / q["path"]).resolve()
        scripts = {m["script"] for m in SCRIPT_RE.finditer("\n".join(body))}
        assert len(scripts) <= 1, f"{smk.name}:{name}: several workflow scripts {scripts}"
        script = SCRIPTS / f"{scripts.pop()}.py" if scripts else None
        rules.append(Rule(name, smk, env, script))
    return rules


def workflow_rules() -> list[Rule]:
    return [rule for smk in sorted(RULES.glob("*.smk")) for rule in parse_rules(smk)]


# --- imports ----------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    """The source file of a project module (``qure.a.b``) or a sibling workflow script."""
    parts = module.split(".")
    if parts[0] == PROJECT_PACKAGE:
        base = SRC.joinpath(*parts)
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None
    script = SCRIPTS / f"{module}.py"
    return script if len(parts) == 1 and script.is_file() else None


def _module_name(path: Path) -> str:
    if not path.is_relative_to(SRC):  # a workflow script
        return path.stem
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (functions included; the body
    of ``if TYPE_CHECKING:`` is skipped, it never runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import sub` imports the submodule when there is one.
            found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def third_party_modules(script: Path) -> dict[str, str]:
    """Top-level third-party module -> the project file that imports it, for ``script``
    and every project module reached from it (with each parent package's __init__)."""
    todo, seen = [script], set()
    external: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in sorted(_imports(path)):
            top = module.split(".")[0]
            parts = module.split(".")
            if top == PROJECT_PACKAGE or _module_file(module):
                for i in range(1, len(parts) + 1):
                    if (f := _module_file(".".join(parts[:i]))) is not None:
                        todo.append(f)
            elif top and top not in sys.stdlib_module_names:
                external.setdefault(top, str(path.relative_to(ROOT)))
    return external


@functools.cache
def _installed_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    dists = _installed_modules().get(module, [])
    if dists:
        return {normalize(d) for d in dists}
    return {normalize(MODULE_DISTRIBUTIONS.get(module, module))}


# --- environments -----------------------------------------------------------------------


# `-e ..[workflow,blip2]`, `.`, `/abs/path[extra]`: the project itself, with extras.
_PROJECT_ENTRY = re.compile(
    r"^(?:(?:-e|--editable)[ \t]+)?(?P<path>[./~][^\[\s]*)(?:\[(?P<x>[^\]]*)\])?$"
)


def _project_requirements(pyproject: Path, extras: set[str]) -> set[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    self_name = normalize(project["name"])
    optional = project.get("optional-dependencies", {})
    names = {normalize(project["name"])}
    todo, done = list(project.get("dependencies", [])), set()
    pending = set(extras)
    while pending:
        extra = pending.pop()
        if extra in done:
            continue
        done.add(extra)
        assert extra in optional, f"{pyproject}: no optional dependency group {extra!r}"
        todo.extend(optional[extra])
    while todo:
        req = Requirement(todo.pop())
        if normalize(req.name) == self_name:
            new = set(req.extras) - done
            done |= new
            for extra in new:
                todo.extend(optional[extra])
        else:
            names.add(normalize(req.name))
    return names


@functools.cache
def _requirement_closure(names: frozenset[str]) -> frozenset[str]:
    """``names`` plus the unconditional requirements of those installed here, recursively."""
    env = default_environment()
    todo, closure = list(names), set(names)
    while todo:
        try:
            requires = importlib.metadata.requires(todo.pop()) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            try:
                req = Requirement(spec)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            if (name := normalize(req.name)) not in closure:
                closure.add(name)
                todo.append(name)
    return frozenset(closure)


def env_distributions(env_file: Path) -> frozenset[str]:
    """Distributions an env yaml provides: its conda and pip lists, the project with the
    extras it installs, and the unconditional requirements of those."""
    spec = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    names: set[str] = set()
    for dep in spec.get("dependencies") or []:
        if isinstance(dep, dict):
            for entry in dep.get("pip") or []:
                entry = entry.strip()
                if m := _PROJECT_ENTRY.match(entry):
                    root = (env_file.parent / Path(m["path"]).expanduser()).resolve()
                    extras = {normalize(x) for x in (m["x"] or "").split(",") if x.strip()}
                    names |= _project_requirements(root / "pyproject.toml", extras)
                elif not entry.startswith("-"):
                    names.add(normalize(Requirement(entry).name))
        else:
            name = normalize(re.split(r"[\s=<>!~\[]", str(dep).split("::")[-1])[0])
            names.add(CONDA_ALIASES.get(name, name))
    return _requirement_closure(frozenset(names))


def missing_distributions(script: Path, env_file: Path) -> dict[str, str]:
    """Distribution -> "module M imported by FILE" for what ``env_file`` lacks."""
    provided = env_distributions(env_file)
    return {
        sorted(dists)[0]: f"module {module} imported by {where}"
        for module, where in sorted(third_party_modules(script).items())
        if not (dists := distributions_of(module)) & provided
    }


# --- tests ------------------------------------------------------------------------------


ALL_RULES = workflow_rules()
SCRIPT_RULES = [rule for rule in ALL_RULES if rule.script is not None]


def test_rules_parsed_cover_every_workflow_script_call():
    names = {rule.name for rule in ALL_RULES}
    assert {"train", "evaluate", "audit_hard_sets", "table", "extract_features_blip2"} <= names
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        calls = len(SCRIPT_RE.findall(text))
        covered = sum(1 for rule in SCRIPT_RULES if rule.smk == smk)
        assert calls == covered, f"{smk.name}: {calls} script calls, {covered} in parsed rules"
        rules = [rule for rule in ALL_RULES if rule.smk == smk]
        for rule in rules:
            assert not rule.name.startswith("<"), f"{smk.name}: {rule.name} has no name"
        # Every rule that runs a shell command runs a workflow script.
        for name, body in _rule_blocks(text):
            if any(re.match(r"^[ \t]+shell:", line) for line in body):
                assert SCRIPT_RE.search("\n".join(body)), f"{smk.name}:{name}: no workflow script"


@pytest.mark.parametrize("rule", SCRIPT_RULES, ids=lambda r: r.name)
def test_rule_env_provides_script_imports(rule):
    assert rule.script.is_file(), f"rule {rule.label}: {rule.script} does not exist"
    assert rule.env is not None, f"rule {rule.label} runs {rule.script.name} without conda:"
    assert rule.env.is_file(), f"rule {rule.label}: env file {rule.env} does not exist"
    missing = missing_distributions(rule.script, rule.env)
    assert not missing, (
        f"rule {rule.label} ({rule.script.relative_to(ROOT)}) under env "
        f"{rule.env.relative_to(ROOT)} misses distributions: "
        + "; ".join(f"{dist} ({why})" for dist, why in missing.items())
    )


def test_lazy_project_imports_are_followed(tmp_path):
    script = tmp_path / "uses_blip2.py"
    script.write_text(
        "def main():\n    from qure.models.blip2_vitl import Blip2VitLConfig\n", encoding="utf-8"
    )
    modules = third_party_modules(script)
    assert {"torch", "transformers", "tokenizers"} <= set(modules)
    assert modules["transformers"] == "src/qure/models/blip2_vitl.py"


def test_env_without_transformers_is_reported(tmp_path):
    script = tmp_path / "uses_blip2.py"
    script.write_text(
        "def main():\n    from qure.models.blip2_vitl import Blip2VitLConfig\n", encoding="utf-8"
    )
    env = tmp_path / "light.yaml"
    env.write_text(
        yaml.safe_dump(
            {
                "name": "light",
                "channels": ["conda-forge", "nodefaults"],
                "dependencies": ["python=3.11", "pip", {"pip": [f"-e {ROOT}[workflow]"]}],
            }
        ),
        encoding="utf-8",
    )
    missing = missing_distributions(script, env)
    assert "transformers" in missing
    assert "blip2_vitl.py" in missing["transformers"]
    # The same env with the blip2 extra has it.
    env.write_text(env.read_text().replace("[workflow]", "[workflow,blip2]"), encoding="utf-8")
    assert missing_distributions(script, env) == {}
