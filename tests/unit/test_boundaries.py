"""The package boundaries the architecture rests on, checked on the source: the ranks' code
(methods/) reaches the launcher only through launcher.contract, and the contract pulls in
neither ray nor torch (a rank must not import Ray; the launcher's CLI must start fast)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def launcher_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "launcher":
                out += [f"launcher.{a.name}" for a in node.names]
            elif node.module.startswith("launcher."):
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name == "launcher" or a.name.startswith("launcher.")]
    return out


def test_methods_import_the_launcher_only_through_the_contract() -> None:
    bad = {str(p.relative_to(REPO)): mods for p in sorted((REPO / "methods").rglob("*.py"))
           if (mods := [m for m in launcher_imports(p) if m != "launcher.contract"])}
    assert bad == {}


def test_the_contract_imports_neither_ray_nor_torch() -> None:
    code = ("import sys, launcher.contract; "
            "print(' '.join(m for m in ('ray', 'torch', 'transformers', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_package_directory_ships_in_the_wheel() -> None:
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for top in ("launcher", "methods")
               for p in (REPO / top).rglob("__init__.py")}
    assert on_disk - listed == set()


def test_the_controller_scheduling_supervision_and_simulator_import_no_ray() -> None:
    """The controller runs on any executor (tests/unit/launcher/control drives an in-memory one):
    Ray stays behind launcher.node, and the controller's unit tests need no cluster."""
    mods = [".".join(p.with_suffix("").relative_to(REPO).parts) for d in ("control", "scheduling", "supervision", "sim")
            for p in sorted((REPO / "launcher" / d).glob("*.py")) if p.name != "__init__.py"]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            "print(' '.join(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert len(mods) > 10 and out.stdout.strip() == ""
