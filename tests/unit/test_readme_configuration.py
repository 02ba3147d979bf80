"""README's configuration table names every setting `pgclip config` knows, and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pgclip.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_configuration_table_lists_every_setting():
    section = README.read_text().split("### Configuration", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `PGCLIP_")]
    listed = {name for row in rows for name in re.findall(r"`(PGCLIP_[A-Z0-9_]+)`", row)}
    known = {f.metadata["setting"].env for f in dataclasses.fields(Settings) if "setting" in f.metadata}
    assert listed == known
