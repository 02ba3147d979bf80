"""The layers in pyproject.toml ([tool.importlinter]) hold: no module imports a layer above its own.

The top-level folders (core/, db/, ...) are installed as sub-packages of ``pgclip``
(pyproject's package-dir), a layout import-linter cannot read from the source tree; the
test assembles the installed tree from the same mapping and lints that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_tree(dest: Path) -> Path:
    """The ``pgclip`` package as pip installs it, built from pyproject's package-dir."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(ROOT / folder, dest / package.replace(".", "/"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static", "model_configs"))
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_every_module_imports_only_from_layers_below_its_own(tmp_path):
    result = lint(installed_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_from_a_higher_layer_breaks_the_contract(tmp_path):
    tree = installed_tree(tmp_path)
    engine = tree / "pgclip" / "db" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom pgclip.application import service  # upward\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "pgclip.db.engine -> pgclip.application.service" in result.stdout
