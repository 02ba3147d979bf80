"""Getting a process to a usable database: reachable, pgvector present, migrated, model registered.

The composition root every entry point goes through (CLI commands, workers,
the API's start-up), so they all fail the same way with the same fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgclip.db import migrate as migrations
from pgclip.db.engine import connect, database_url, describe_target, require_pgvector, require_text_search_config
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
    url = migrate_schema(settings)
    return url, register_configured_model(url, settings)


def migrate_schema(settings: Settings) -> str:
    """``alembic upgrade head`` (one process at a time: the migrations take an advisory lock)."""
    url = reachable_url(settings)
    with connect(url, vector=False) as conn:
        require_pgvector(conn, url)
        migrations.require_not_newer(conn)
    import sqlalchemy.exc

    try:
        migrations.upgrade(url)
    except sqlalchemy.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(f"migrating the database at {describe_target(url)} failed: {reason}") from exc
    return url


def storing_model(url: str, settings: Settings, *, quick: bool = False) -> tuple[ModelRow, str | None]:
    """The model a process that stores images but embeds none (ingest, `pgclip sync` without
    --embed, `pgclip migrate`) queues them for, with a note when it is not the configured one.

    The configured model (PGCLIP_MODEL / PGCLIP_PRETRAINED) when it is registered, or when the
    database has no active model yet (a first run registers it). Otherwise the active model:
    a PGCLIP_MODEL left naming a model never registers it beside the active one. (After a
    re-embed and `pgclip models drop` of the old model, the next ingest brought the old model
    back, "building" for ever, with every new image queued for it and none of the old ones.)
    Whatever model the caller names, `queue.enqueue` queues for the active and building ones too.
    """
    from pgclip.workers.encoder import pretrained_identity

    identity = pretrained_identity(settings.model, settings.pretrained, settings.encoder)
    with connect(url, role="migrate") as conn:
        known = registered_model(conn, settings.model, identity)
        active = active_model(conn)
    if known is None and active is not None:
        return active, (f"PGCLIP_MODEL={settings.model} ({identity}) is not registered, so it is left out: "
                        f"images are queued for the active model {active.label} "
                        f"(`pgclip reembed {settings.model}` adds the other)")
    if known is not None and quick:
        return known, None  # what register_configured_model's quick path would look up again
    return register_configured_model(url, settings), None


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


def worker_model(url: str, settings: Settings) -> ModelRow:
    """The registered model a worker embeds for: the one named by PGCLIP_MODEL / PGCLIP_PRETRAINED
    (``--model`` / ``--pretrained``). A worker registers it only into a database with no active
    model (a first run); beside an active model it refuses (ConfigError) a model that is not
    registered, since nothing would ever be queued for it: `pgclip reembed` registers a model and
    queues its images. A checkpoint whose file changed after registration has another identity
    (its sha256), so the refusal names the identities registered under that name."""
    from pgclip.core.errors import ConfigError
    from pgclip.db.models import list_models
    from pgclip.workers.encoder import pretrained_identity, weights_of

    identity = pretrained_identity(settings.model, settings.pretrained, settings.encoder)
    with connect(url, role="migrate") as conn:
        active = active_model(conn)
        have = {m.pretrained for m in list_models(conn) if m.name == settings.model}
    if active is not None and identity not in have:
        listed = ", ".join(sorted(have))
        if weights_of(identity) in {weights_of(h) for h in have}:  # the weights are there, not in this precision
            raise ConfigError(f"{settings.model} is registered as {listed}, not as {identity}: int8 vectors "
                              f"(PGCLIP_ENCODER=onnx-int8) are a model of their own; run the worker with the "
                              f"PGCLIP_ENCODER its model was registered with, or `pgclip reembed {settings.model}` "
                              f"with PGCLIP_ENCODER={settings.encoder} to add this one")
        if have:
            raise ConfigError(f"{settings.model} is registered with weights {listed}, not with {identity} "
                              f"({settings.pretrained}): point PGCLIP_PRETRAINED at the weights it was registered "
                              f"with, or `pgclip reembed {settings.model}` with these")
        raise ConfigError(f"{settings.model} ({identity}) is not registered, so nothing is queued for it: "
                          f"`pgclip reembed {settings.model}` registers it and queues the collection "
                          f"(`pgclip models` lists the registered models)")
    return register_configured_model(url, settings)


def ready_url(settings: Settings) -> str:
    """The database URL of a process that needs the schema at head (worker, API, queries)."""
    url = reachable_url(settings)
    with connect(url) as conn:
        migrations.require_head(conn)
        require_text_search_config(conn, settings.text_search_config)
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
