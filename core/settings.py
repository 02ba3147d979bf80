"""pgclip's configuration: one frozen object read from ``PGCLIP_*`` variables.

Read once at the entry point (the CLI, the API factory, a test fixture) and
passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from pgclip.core.errors import ConfigError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
ENCODERS = ("auto", "torch", "onnx", "onnx-int8")  # PGCLIP_ENCODER (workers/encoder.py)
LOG_FORMATS = ("text", "json")  # PGCLIP_LOG_FORMAT (core/logs.py)
MEMORY_SIZE = r"[1-9][0-9]*(kB|MB|GB|TB)"  # a PostgreSQL memory setting as pgclip takes it: 512MB, 2GB
HNSW_M = (2, 100)  # pgvector's bounds of an HNSW graph's m
HNSW_EF_CONSTRUCTION = (4, 1000)  # ... and of its ef_construction (which must also be at least 2 m)
DEVICE = r"auto|cpu|cuda(:[0-9]+)?"  # PGCLIP_DEVICE


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field is read from the environment and documented."""

    env: str
    help: str
    secret: bool = False


def _field(default: Any, env: str, help: str, *, secret: bool = False) -> Any:
    return dataclasses.field(default=default, metadata={"setting": Setting(env, help, secret)})


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("pgclip"))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective configuration. Build it with :meth:`from_env`."""

    database_url: str | None = _field(
        None, "PGCLIP_DATABASE_URL",
        "PostgreSQL URL (with pgvector available). Unset: the embedded server under PGCLIP_DATA_DIR.",
        secret=True,
    )
    read_database_urls: tuple[str, ...] = _field(
        (), "PGCLIP_READ_DATABASE_URLS",
        "Comma-separated URLs of streaming read replicas of PGCLIP_DATABASE_URL: the API and `pgclip search` "
        "send searches and other reads to them (writes always go to the primary). Unset: everything on the primary.",
        secret=True,
    )
    max_replica_lag: float = _field(
        5.0, "PGCLIP_MAX_REPLICA_LAG",
        "Seconds a read replica may be behind the primary and still answer reads; beyond it reads go elsewhere.",
    )
    data_dir: Path = dataclasses.field(
        default_factory=_default_data_dir,
        metadata={"setting": Setting("PGCLIP_DATA_DIR", "Where the embedded PostgreSQL keeps its data (persists between runs).")},
    )
    pg_shared_buffers: str = _field(
        "auto", "PGCLIP_PG_SHARED_BUFFERS",
        "The embedded server's shared_buffers: auto (1/8 of the machine's memory, 128MB to 8GB) or a size "
        "such as 2GB; a change takes effect when the server next starts.",
    )
    pg_maintenance_work_mem: str = _field(
        "auto", "PGCLIP_PG_MAINTENANCE_WORK_MEM",
        "The embedded server's maintenance_work_mem, the memory of an index build: auto (1/8 of the machine's "
        "memory, 256MB to 8GB) or a size such as 4GB.",
    )
    model: str = _field(DEFAULT_MODEL, "PGCLIP_MODEL", "open_clip model name (test-tiny: random weights, tests only).")
    pretrained: str = _field(
        DEFAULT_PRETRAINED, "PGCLIP_PRETRAINED", "open_clip pretrained tag, or the path of a local checkpoint file."
    )
    device: str = _field("auto", "PGCLIP_DEVICE", "Torch device for the encoder: auto (CUDA when present), cpu, cuda, cuda:N.")
    encoder: str = _field(
        "auto", "PGCLIP_ENCODER",
        "What runs the model: auto (torch on a GPU, onnx on the CPU), torch, onnx (ONNX Runtime fp32: torch's "
        "vectors, faster on a CPU), onnx-int8 (faster still; other vectors, so a model of its own: a re-embed).",
    )
    batch_size: int = _field(32, "PGCLIP_BATCH_SIZE", "Images a worker claims and encodes at once.")
    torch_threads: int = _field(0, "PGCLIP_TORCH_THREADS", "Torch intra-op threads per process (0: torch's default, one per core).")
    model_threads: int = _field(
        0, "PGCLIP_MODEL_THREADS",
        "Worker on the CPU: threads running the model at once, each on its own batch, sharing the torch threads "
        "(0: auto, 2 when there are 2+ torch threads, 1 on a GPU).",
    )
    lease_seconds: int = _field(120, "PGCLIP_LEASE_SECONDS", "How long a claimed job stays leased before another worker may take it.")
    max_attempts: int = _field(5, "PGCLIP_MAX_ATTEMPTS", "Attempts before a job with transient failures ends failed.")
    text_search_config: str = _field("english", "PGCLIP_TEXT_SEARCH_CONFIG", "PostgreSQL text search configuration for captions.")
    hnsw_m: int | None = _field(
        None, "PGCLIP_HNSW_M",
        "HNSW graph degree (m) of new models' indexes. Unset: chosen from the collection's size when the index is "
        "built (16).",
    )
    hnsw_ef_construction: int | None = _field(
        None, "PGCLIP_HNSW_EF_CONSTRUCTION",
        "HNSW ef_construction of new models' indexes. Unset: chosen from the collection's size when the index is "
        "built (64 up to 500,000 vectors, 128 above).",
    )
    host: str = _field("127.0.0.1", "PGCLIP_HOST", "Address `pgclip serve` listens on.")
    port: int = _field(8000, "PGCLIP_PORT", "Port `pgclip serve` listens on.")
    api_keys: str | None = _field(
        None, "PGCLIP_API_KEYS",
        "Comma-separated keys that allow writes over HTTP (Authorization: Bearer KEY). Unset: writes only on loopback.",
        secret=True,
    )
    upload_max_bytes: int = _field(25_000_000, "PGCLIP_UPLOAD_MAX_BYTES", "Largest request body (image upload) the API accepts, in bytes.")
    video_frame_interval: float = _field(
        5.0, "PGCLIP_VIDEO_FRAME_INTERVAL", "Seconds between the frames sampled from a video (the first frame is always one)."
    )
    video_max_frames: int = _field(
        1000, "PGCLIP_VIDEO_MAX_FRAMES", "Most frames sampled from one video: a longer video gets a wider interval."
    )
    video_upload_max_bytes: int = _field(
        200_000_000, "PGCLIP_VIDEO_UPLOAD_MAX_BYTES",
        "Largest video upload the API accepts, in bytes (POST /api/images; images keep PGCLIP_UPLOAD_MAX_BYTES).",
    )
    log_format: str = _field(
        "text", "PGCLIP_LOG_FORMAT", "Log lines on stderr: text, or json (one JSON object per line, for log collectors)."
    )
    worker_metrics_port: int = _field(
        0, "PGCLIP_WORKER_METRICS_PORT",
        "`pgclip worker` serves Prometheus metrics on this port (0: none); --concurrency N uses this port and the N-1 after it.",
    )
    worker_metrics_host: str = _field("127.0.0.1", "PGCLIP_WORKER_METRICS_HOST", "Address a worker's metrics port listens on.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``PGCLIP_*`` variable; raise :class:`ConfigError` naming a bad one."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            setting: Setting = f.metadata["setting"]
            raw = environ.get(setting.env)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.type, setting.env, raw)
        values.update(overrides)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        for name in ("pg_shared_buffers", "pg_maintenance_work_mem"):
            if not re.fullmatch(f"auto|{MEMORY_SIZE}", getattr(self, name)):
                raise ConfigError(f"{self._env(name)} must be auto or a size such as 512MB or 2GB, "
                                  f"got {getattr(self, name)!r}")
        for name in ("batch_size", "lease_seconds", "max_attempts", "hnsw_m", "hnsw_ef_construction", "port",
                     "upload_max_bytes", "video_max_frames", "video_upload_max_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{self._env(name)} must be at least 1, got {getattr(self, name)}")
        for name, (low, high) in (("hnsw_m", HNSW_M), ("hnsw_ef_construction", HNSW_EF_CONSTRUCTION)):
            if getattr(self, name) is not None and not low <= getattr(self, name) <= high:
                raise ConfigError(f"{self._env(name)} must be between {low} and {high}, got {getattr(self, name)}")
        if self.hnsw_m is not None and self.hnsw_ef_construction is not None \
                and self.hnsw_ef_construction < 2 * self.hnsw_m:
            raise ConfigError(f"PGCLIP_HNSW_EF_CONSTRUCTION must be at least twice PGCLIP_HNSW_M "
                              f"({2 * self.hnsw_m}), got {self.hnsw_ef_construction}")
        if not re.fullmatch(DEVICE, self.device):
            raise ConfigError(f"PGCLIP_DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 0.1 <= self.video_frame_interval <= 86400:  # a NaN fails this too
            raise ConfigError(f"PGCLIP_VIDEO_FRAME_INTERVAL must be 0.1 to 86400 seconds, got {self.video_frame_interval}")
        for name in ("torch_threads", "model_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self._env(name)} must be 0 or more, got {getattr(self, name)}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"PGCLIP_PORT must be a port number (1 to 65535), got {self.port}")
        if not 0 <= self.worker_metrics_port <= 65535:
            raise ConfigError(f"PGCLIP_WORKER_METRICS_PORT must be a port number (0 for none), got {self.worker_metrics_port}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"PGCLIP_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"PGCLIP_ENCODER must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", self.text_search_config):
            raise ConfigError(f"PGCLIP_TEXT_SEARCH_CONFIG is not a text search configuration name: {self.text_search_config!r}")
        if self.database_url is not None and not re.match(r"postgres(ql)?(\+\w+)?://", self.database_url):
            raise ConfigError("PGCLIP_DATABASE_URL must start with postgresql:// (got something else)")
        for n, url in enumerate(self.read_database_urls, start=1):
            if not re.match(r"postgres(ql)?(\+\w+)?://", url):
                raise ConfigError(f"PGCLIP_READ_DATABASE_URLS: URL {n} must start with postgresql:// (got something else)")
        if not 0 <= self.max_replica_lag <= 3600:  # a NaN fails this too
            raise ConfigError(f"PGCLIP_MAX_REPLICA_LAG must be 0 to 3600 seconds, got {self.max_replica_lag}")

    @property
    def write_keys(self) -> tuple[str, ...]:
        """The API keys that allow writes (empty: none configured)."""
        return tuple(k.strip() for k in (self.api_keys or "").split(",") if k.strip())

    def _env(self, name: str) -> str:
        return next(f.metadata["setting"].env for f in dataclasses.fields(self) if f.name == name)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value with secrets masked, help) for every setting."""
        rows = []
        for f in dataclasses.fields(self):
            setting: Setting = f.metadata["setting"]
            value = getattr(self, f.name)
            if value is None and f.name.startswith("hnsw_"):
                shown = "(unset: by the collection's size)"
            elif value is None or value == ():
                shown = "(unset)"
            elif f.name == "read_database_urls":
                shown = ", ".join(mask_url(url) for url in value)
            elif setting.secret and f.name == "database_url":
                shown = mask_url(str(value))
            elif setting.secret:
                n = len(self.write_keys)
                shown = f"({n} key{'' if n == 1 else 's'}, hidden)"
            else:
                shown = str(value)
            rows.append((setting.env, shown, setting.help))
        return rows


def _parse(type_name: Any, env: str, raw: str) -> Any:
    kind = str(type_name)
    if kind in ("int", "int | None"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env} must be an integer, got {raw!r}") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env} must be a number, got {raw!r}") from None
    if kind == "Path":
        return Path(raw).expanduser()
    if kind == "tuple[str, ...]":  # comma-separated; blanks between commas are dropped
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def mask_url(url: str) -> str:
    """Hide the password of a connection URL (``user:***@host``)."""
    return re.sub(r"(://[^:/@]*:)([^@]*)@", r"\1***@", url)
