"""Wire types of the HTTP API (msgspec Structs: validated on the way in, fast on the way out).

Request types forbid unknown fields: a misspelt option is a 400 naming it,
never silently ignored.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

K = Annotated[int, msgspec.Meta(ge=1, le=100, description="results per page (1-100)")]
Similarity = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]


class Filters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Narrow a search; every given filter must hold."""

    taken_after: dt.datetime | None = None
    taken_before: dt.datetime | None = None
    min_width: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    min_height: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    orientation: Literal["landscape", "portrait", "square"] | None = None
    format: Annotated[list[Annotated[str, msgspec.Meta(max_length=16, pattern=r"^[A-Za-z0-9]+$")]], msgspec.Meta(max_length=16)] | None = None
    metadata: dict[str, Any] | None = None
    has_caption: bool | None = None
    exclude_ids: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=2**62)]], msgspec.Meta(max_length=1000)] | None = None

    def as_sql(self) -> dict[str, Any]:
        """The filters object ``pgclip.search`` takes."""
        out = msgspec.to_builtins(self)
        return {k: v for k, v in out.items() if v is not None}


class SearchOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    caption_query: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    filters: Filters = msgspec.field(default_factory=Filters)
    k: K = 10
    fusion: Literal["rrf", "weighted"] = "rrf"
    weight: Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="vector share in weighted fusion")] = 0.5
    min_similarity: Similarity | None = None
    max_drop: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    order: Literal["relevance", "newest", "oldest"] = "relevance"
    cursor: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class SearchRequest(SearchOptions, forbid_unknown_fields=True, kw_only=True):
    """A search by text (optionally composed: ``"2:dog" + #12 - grass``), caption words, a raw
    vector, or any mix. At least one of text, caption_query and vector is required."""

    text: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    vector: Annotated[list[float], msgspec.Meta(max_length=4096)] | None = None


class Result(msgspec.Struct):
    id: int
    score: float
    similarity: float | None
    text_rank: float | None
    vector_rank: int | None
    text_rank_position: int | None
    source: str | None
    width: int
    height: int
    format: str
    taken_at: dt.datetime | None
    metadata: dict[str, Any]
    caption: str | None
    thumbnail_url: str | None
    url: str


class SearchResponse(msgspec.Struct):
    results: list[Result]
    next_cursor: str | None
    model: str


class Caption(msgspec.Struct):
    id: int
    text: str


class ImageDetail(msgspec.Struct):
    id: int
    sha256: str
    source: str | None
    width: int
    height: int
    format: str
    mime: str
    byte_size: int
    taken_at: dt.datetime | None
    created_at: dt.datetime
    metadata: dict[str, Any]
    captions: list[Caption]
    model: str
    embedded: bool
    queue_state: str | None
    last_error: str | None
    thumbnail_url: str | None
    original_url: str


class UploadResponse(msgspec.Struct):
    id: int
    created: bool
    queue_state: str | None
    url: str


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


class ImageEdit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Changes to one image. Vectors are untouched: edits never re-embed."""

    metadata: dict[str, Any] | None = None
    metadata_mode: Literal["merge", "replace"] = "merge"
    unset_metadata: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=100)] = []
    taken_at: dt.datetime | None | msgspec.UnsetType = msgspec.UNSET
    captions_add: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]], msgspec.Meta(max_length=100)] = []
    captions_remove: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=2**62)]], msgspec.Meta(max_length=1000)] = []


class IndexState(msgspec.Struct):
    kind: Literal["hnsw", "ivfflat", "none"]
    storage: Literal["vector", "halfvec"]
    params: dict[str, int]
    size_bytes: int | None
    valid: bool | None


class ModelInfo(msgspec.Struct):
    id: int
    name: str
    pretrained: str
    dimension: int
    state: str
    vectors: int
    images: int
    index: IndexState


class Activation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    force: bool = msgspec.field(default=False)  # activate before every image has its vector


class ActivationResponse(msgspec.Struct):
    active: ModelInfo
    previous: str | None  # the model it replaced (None: it already was active)


Positive = Annotated[int, msgspec.Meta(ge=1, le=32768)]


class IndexRebuild(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to change about a model's index; what is left out keeps its value (see `pgclip index rebuild`)."""

    kind: Literal["hnsw", "ivfflat", "none"] | None = None
    halfvec: bool | None = None
    m: Positive | None = None
    ef_construction: Positive | None = None
    ef_search: Positive | None = None
    lists: Positive | None = None
    probes: Positive | None = None


class IndexRebuildResponse(msgspec.Struct):
    model: ModelInfo
    built: bool  # False: only query-time settings changed, or the index was dropped (kind none)
    seconds: float
