"""compose.yaml cannot run here (no Docker engine), so check what it would run."""

from __future__ import annotations

from pathlib import Path

import yaml

from pgclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _pgclip_commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_every_service_runs_a_real_pgclip_or_alembic_command():
    services = _compose()["services"]
    assert {"db", "migrate", "api", "worker"} <= set(services)
    known = _pgclip_commands()
    for name, service in services.items():
        command = service.get("command")
        if name == "db":
            assert service["image"].startswith("pgvector/pgvector")
            continue
        assert command, name
        if command[0] == "alembic":
            assert command[1:] == ["upgrade", "head"]
            assert (ROOT / "alembic.ini").exists()
        else:
            assert command[0] == "pgclip" and command[1] in known, f"{name}: {command}"
            build_parser().parse_args(command[1:])  # its options parse too


def test_services_start_in_order_and_share_one_database_url():
    services = _compose()["services"]
    assert "healthcheck" in services["db"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["PGCLIP_DATABASE_URL"].startswith("postgresql://")
    assert "ports" not in services["worker"]  # workers scale with --scale worker=N


def test_the_dockerfile_installs_what_the_services_run():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("pgclip", "api", "db", "workers", "migrations"):
        assert f"COPY {folder} " in dockerfile
    assert "alembic.ini" in dockerfile
