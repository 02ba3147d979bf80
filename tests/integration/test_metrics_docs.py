"""README's "Metrics and logs" names only metrics that exist, and its Prometheus examples parse."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pgclip.api.metrics import ApiMetrics
from pgclip.db.metrics import DatabaseCollector, PoolCollector
from pgclip.workers.metrics import WorkerMetrics, process_registry

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def section() -> str:
    return ROOT.joinpath("README.md").read_text().split("### Metrics and logs", 1)[1].split("\n## ", 1)[0]


def exported_names() -> set[str]:
    """Every metric family the API and a worker export, the database's included."""
    registries = [ApiMetrics(lambda: None).registry, process_registry()]
    WorkerMetrics(registries[1], model="m", pretrained="p")
    names = {family.name for registry in registries for family in registry.collect()}
    # Collected without a database or a pool, these two export nothing: their declared families.
    described = [*DatabaseCollector(lambda: None).describe(), *PoolCollector(lambda: None).describe()]
    return names | {family.name for family in described}


def test_every_metric_the_readme_names_is_exported_and_every_pgclip_metric_is_documented():
    exported = exported_names()
    text = section()
    named = set()
    for name in re.findall(r"\bpgclip_[a-z_]+", text):
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in exported:
                name = name.removesuffix(suffix)
        named.add(name)
    assert named - exported == set()
    assert {n for n in exported if n.startswith("pgclip_")} - named == set()


def test_the_scrape_config_and_the_alert_rules_parse_and_use_documented_jobs():
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section(), flags=re.DOTALL)]
    scrape, rules = blocks
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"pgclip-api", "pgclip-workers"}
    alerts = rules["groups"][0]["rules"]
    assert all(rule["alert"].startswith("Pgclip") and rule["expr"] for rule in alerts)
    for rule in alerts:
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, rule
