"""README's layout table is the tree: every top-level folder, its package, in the layers' order."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_rows() -> list[tuple[str, str]]:
    """(folder, installs as) for each row of README's "## Layout" table, in order."""
    section = ROOT.joinpath("README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [(folder, package) for folder, package in
            re.findall(r"^\| `([^`]+)/` \| (?:`([^`]*)`)? *\|", section, flags=re.MULTILINE)]


def test_the_layout_table_lists_every_top_level_folder_once():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    listed = [folder for folder, _ in layout_rows()]
    assert sorted(listed) == sorted(folders)


def test_the_layout_table_names_each_package_and_follows_the_layers():
    config = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["tool"]
    package_dir = config["setuptools"]["package-dir"]
    rows = layout_rows()
    assert {package: folder for folder, package in rows if package} == package_dir
    # The table goes bottom to top; the contract lists top to bottom, siblings joined by | or :.
    layers = [re.split(r"\s*[|:]\s*", layer) for layer in reversed(config["importlinter"]["contracts"][0]["layers"])]
    order = {package: rank for rank, layer in enumerate(layers) for package in layer}
    ranks = [order.get(package, len(layers)) for _, package in rows if package]
    assert ranks == sorted(ranks), rows
