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

from qure.workflow.provenance import SCRIPT_RE, reached_files, rule_blocks

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
SCRIPTS = ROOT / "workflow_scripts"

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

CONDA_RE = re.compile(r"^[ \t]+conda:[ \t]*(?P<inline>\S.*)?$")
QUOTED_RE = re.compile(r"""^\s*(?:f?r?)(["'])(?P<path>[^"']+)\1\s*,?\s*$""")


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


def parse_rules(smk: Path) -> list[Rule]:
    rules = []
    for name, body in rule_blocks(smk.read_text(encoding="utf-8")):
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


def third_party_modules(script: Path) -> dict[str, str]:
    """Top-level third-party module -> the project file that imports it, for ``script``
    and every project module reached from it (qure.workflow.provenance: the same graph
    that makes a rule's code its input)."""
    _, external = reached_files(ROOT, script)
    return {module: where for module, where in external.items()
            if module not in sys.stdlib_module_names}


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
        for name, body in rule_blocks(text):
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
