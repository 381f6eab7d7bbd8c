"""分层：下层不 import 上层。model/ 是最底层（trainer/ 和实验都用它），它 import modules/ 或 trainer/ 就成了环。"""
import ast

from conftest import REPO_ROOT


def imported_top_packages(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_imports_neither_modules_nor_trainer():
    offenders = {p.relative_to(REPO_ROOT).as_posix(): sorted(imported_top_packages(p) & {"modules", "trainer", "scripts"})
                 for p in sorted((REPO_ROOT / "model").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom modules.common.device import get_device\n", encoding="utf-8")
    assert "modules" in imported_top_packages(bad)
