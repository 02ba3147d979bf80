"""Getting a process to a usable database: reachable, pgvector present, migrated, model registered.

The composition root every entry point goes through (CLI commands, workers,
the API's start-up), so they all fail the same way with the same fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgclip.db import migrate as migrations
from pgclip.db.engine import connect, database_url, describe_target, require_pgvector
from pgclip.db.models import ModelRow, active_model, ensure_model, registered_model
from pgclip.core.errors import DatabaseUnavailable
from pgclip.core.settings import Settings

if TYPE_CHECKING:
    from pgclip.application.service import Service
    from pgclip.workers.encoder import ClipEncoder


def reachable_url(settings: Settings) -> str:
    """The database URL, after checking it answers (starting the embedded server if needed)."""
    url = database_url(settings)
    with connect(url, vector=False) as conn:
        conn.execute("SELECT 1")
    return url


def migrate(settings: Settings) -> tuple[str, ModelRow]:
    """``alembic upgrade head``, then register the configured model and its vector index."""
    url = reachable_url(settings)
    with connect(url, vector=False) as conn:
        require_pgvector(conn, url)
    import sqlalchemy.exc

    try:
        migrations.upgrade(url)
    except sqlalchemy.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(f"migrating the database at {describe_target(url)} failed: {reason}") from exc
    return url, register_configured_model(url, settings)


def register_configured_model(url: str, settings: Settings, *, quick: bool = False) -> ModelRow:
    """Make sure the model named by PGCLIP_MODEL / PGCLIP_PRETRAINED has its row and index.

    ``quick``: for callers that never encode (ingest), accept an already registered model
    without re-checking its dimension against open_clip's config, which imports torch.
    """
    # The encoder module imports torch lazily; its config lookups do not load weights.
    from pgclip.workers.encoder import model_dimension, pretrained_identity

    identity = pretrained_identity(settings.model, settings.pretrained, settings.encoder)  # int8: a row of its own
    with connect(url, role="migrate") as conn:
        known = registered_model(conn, settings.model, identity) if quick else None
        if known is not None:
            return known  # seconds of torch import saved; whoever encodes still checks
        return ensure_model(
            conn, settings.model, identity, model_dimension(settings.model),
            hnsw_m=settings.hnsw_m, hnsw_ef_construction=settings.hnsw_ef_construction,
        )


def ready_url(settings: Settings) -> str:
    """The database URL of a process that needs the schema at head (worker, API, queries)."""
    url = reachable_url(settings)
    with connect(url) as conn:
        migrations.require_head(conn)
    return url


def open_service(settings: Settings, encoder: ClipEncoder | None = None) -> Service:
    """The Service of a process that answers searches (``pgclip serve``, ``search``, ``demo``):
    the database at schema head, a model active (the configured one, registered, when none is),
    the encoder loaded and warm (``encoder``: one this process already holds for the configured
    model).

    A reader never registers the configured model beside an active one: that would leave a
    model "building" that only workers of its own fill (`pgclip reembed` is the way to add one).

    Fails with a pgclip error (one line on the CLI) before anything is served.
    """
    from pgclip.application.service import Service
    from pgclip.workers.encoder import ClipEncoder

    url = ready_url(settings)
    with connect(url) as conn:
        active = active_model(conn)
    if active is None:
        register_configured_model(url, settings)
    service = Service(settings, url, encoder or ClipEncoder.from_settings(settings))
    service.open()
    return service
