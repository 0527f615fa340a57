"""The package's import graph (qure.workflow.provenance): no import cycle in src/qure,
and the walker finds one where there is one."""

from __future__ import annotations

from pathlib import Path

from qure.workflow.provenance import code_files, import_cycles
from tests.conftest import REPO_ROOT


def test_src_qure_has_no_import_cycle():
    assert import_cycles(REPO_ROOT) == []


def _package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_cycle_is_found_and_lazy_or_type_checking_imports_are_not_one(tmp_path):
    _package(tmp_path, {
        "src/qure/__init__.py": "",
        "src/qure/a.py": "from qure import b\n",
        "src/qure/b.py": "from qure.c import thing\n",
        "src/qure/c.py": "import qure.a\nthing = 1\n",
        "src/qure/d.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from qure import e\ndef f():\n    from qure import e\n"),
        "src/qure/e.py": "from qure import d\n",
    })
    assert import_cycles(tmp_path) == [["qure.a", "qure.b", "qure.c", "qure.a"]]


def test_code_files_follow_lazy_imports_parents_and_package_data(tmp_path):
    _package(tmp_path, {
        "src/qure/__init__.py": "",
        "src/qure/sub/__init__.py": "",
        "src/qure/sub/mod.py": "def f():\n    from qure.other import x\n",
        "src/qure/sub/table.yaml": "a: 1\n",
        "src/qure/other.py": "x = 1\n",
        "src/qure/unused.py": "",
        "workflow_scripts/cli.py": "from qure.sub import mod\n",
    })
    assert code_files(tmp_path, "workflow_scripts/cli.py") == [
        "src/qure/__init__.py", "src/qure/other.py", "src/qure/sub/__init__.py",
        "src/qure/sub/mod.py", "src/qure/sub/table.yaml", "workflow_scripts/cli.py"]
