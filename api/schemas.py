"""Wire types of the HTTP API (msgspec Structs: validated on the way in, fast on the way out).

Request types forbid unknown fields (JSON bodies and multipart forms alike): a
misspelt option is a 400 naming it, never silently ignored. Below the types,
the checks every piece of client JSON and text passes before anything stores
or parses it further (``check_json_depth``, ``check_text``, ``decode_json``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import typing
from typing import Annotated, Any, Literal

import msgspec
from litestar.datastructures import UploadFile

from pgclip.core.errors import InvalidInput
from pgclip.core.search_request import FORMAT_NAME_PATTERN, MAX_FORMAT_NAME, MAX_TEXT, PARAMS
from pgclip.db.search import Hit, Page
from pgclip.db.tags import KEY_PATTERN, MAX_LABEL_CHARS, MAX_LABELS
from pgclip.db.videos import Video, VideoFrame

# Deepest nesting of [ and { in any JSON the API reads (a body, a form field, a query parameter).
# msgspec, Python's json (psycopg's Jsonb dumper) and PostgreSQL's jsonb parser all recurse once
# per level; deep enough input ends in RecursionError or "stack depth limit exceeded". 32 leaves
# metadata and filters far more room than any real use needs.
MAX_JSON_DEPTH = 32
MAX_FORM_JSON = 1_000_000  # characters in a multipart field holding JSON (captions, metadata, options)


def _meta(name: str) -> msgspec.Meta:
    """msgspec's constraints and help for one field of the search request, from its definition
    (``pgclip.core.search_request``); its choices are the field's ``Literal`` type, and a
    list's bounds are its items' (``_item_meta``)."""
    p = PARAMS[name]
    if p.kind in ("ids", "texts"):
        return msgspec.Meta(max_length=p.max_length, description=p.help)
    return msgspec.Meta(ge=p.minimum, le=p.maximum, max_length=p.max_length, description=p.help)


def _item_meta(name: str) -> msgspec.Meta:
    p = PARAMS[name]
    return msgspec.Meta(ge=p.minimum, le=p.maximum)


FormatName = Annotated[str, msgspec.Meta(max_length=MAX_FORMAT_NAME, pattern=FORMAT_NAME_PATTERN)]


class Filters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Narrow a search; every given filter must hold."""

    # ISO 8601 text, checked by the search request's definition (core.times): a date as well as
    # a date and time, never a number (msgspec's lax mode reads 20240101 as seconds since 1970).
    taken_after: Annotated[str, _meta("taken_after")] | None = None
    taken_before: Annotated[str, _meta("taken_before")] | None = None
    min_width: Annotated[int, _meta("min_width")] | None = None
    min_height: Annotated[int, _meta("min_height")] | None = None
    orientation: Annotated[Literal[PARAMS["orientation"].choices], _meta("orientation")] | None = None
    format: Annotated[list[FormatName], _meta("format")] | None = None
    metadata: Annotated[dict[str, Any], _meta("metadata")] | None = None
    has_caption: Annotated[bool, _meta("has_caption")] | None = None
    exclude_ids: Annotated[list[Annotated[int, _item_meta("exclude_ids")]], _meta("exclude_ids")] | None = None
    folder: Annotated[str, _meta("folder")] | None = None

    def as_sql(self) -> dict[str, Any]:
        """The filters object ``pgclip.search`` takes."""
        out = msgspec.to_builtins(self)
        return {k: v for k, v in out.items() if v is not None}


class SearchOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    caption_query: Annotated[str, _meta("caption_query")] | None = None
    filters: Filters = msgspec.field(default_factory=Filters)
    k: Annotated[int, _meta("k")] = PARAMS["k"].default
    fusion: Annotated[Literal[PARAMS["fusion"].choices], _meta("fusion")] = PARAMS["fusion"].default
    weight: Annotated[float, _meta("weight")] = PARAMS["weight"].default
    min_similarity: Annotated[float, _meta("min_similarity")] | None = None
    max_drop: Annotated[float, _meta("max_drop")] | None = None
    order: Annotated[Literal[PARAMS["order"].choices], _meta("order")] = PARAMS["order"].default
    cursor: Annotated[str, _meta("cursor")] | None = None

    def as_options(self) -> dict[str, Any]:
        """The options as ``Service.search`` and ``Service.similar`` take them (a request's
        text and vector are the query, passed apart)."""
        options = {name: getattr(self, name) for name in SearchOptions.__struct_fields__}
        return {**options, "filters": self.filters.as_sql()}


class SearchRequest(SearchOptions, forbid_unknown_fields=True, kw_only=True):
    """A search by text (optionally composed: ``"2:dog" + #12 - grass``), caption words, a raw
    vector, or any mix. At least one of text, caption_query and vector is required."""

    text: Annotated[str, _meta("text")] | None = None
    vector: Annotated[list[float], _meta("vector")] | None = None


class FrameVideo(msgspec.Struct):
    """The video an image is a frame of (null for a picture): play ``url`` from ``timestamp``."""

    id: int
    timestamp: float  # seconds from the start of the video
    source: str | None
    mime: str
    duration_s: float | None
    url: str  # the video's bytes; Range requests are answered (a browser seeks with them)

    @classmethod
    def of(cls, frame: VideoFrame | None) -> FrameVideo | None:
        if frame is None:
            return None
        return cls(id=frame.video_id, timestamp=frame.ts, source=frame.source, mime=frame.mime,
                   duration_s=frame.duration_s, url=f"/api/videos/{frame.video_id}/original")


def _result_type() -> type[msgspec.Struct]:
    """One search result as the API sends it, built from the one description of a result
    (``pgclip.db.search.Hit``): its ``image_id`` is sent as ``id``, and links stand in for
    ``has_thumbnail``."""
    hints = typing.get_type_hints(Hit)
    fields = [(f.name, hints[f.name]) for f in dataclasses.fields(Hit) if f.name != "has_thumbnail"]
    return msgspec.defstruct("Result", [*fields, ("thumbnail_url", str | None), ("url", str),
                                        ("video", FrameVideo | None)],
                             rename={"image_id": "id"}, module=__name__)


Result = _result_type()
_RESULT_FIELDS = tuple(name for name in Result.__struct_fields__ if name not in ("thumbnail_url", "url", "video"))


class SearchResponse(msgspec.Struct):
    results: list[Result]
    next_cursor: str | None
    model: str

    @classmethod
    def of(cls, page: Page) -> SearchResponse:
        """The API's answer for one page of hits (with their videos, where the service found them)."""
        videos = getattr(page, "videos", None) or {}
        return cls(
            results=[
                Result(**{name: getattr(hit, name) for name in _RESULT_FIELDS},
                       thumbnail_url=f"/api/images/{hit.image_id}/thumbnail" if hit.has_thumbnail else None,
                       url=f"/api/images/{hit.image_id}", video=FrameVideo.of(videos.get(hit.image_id)))
                for hit in page.hits
            ],
            next_cursor=page.next_cursor,
            model=page.model,
        )


class Caption(msgspec.Struct):
    id: int
    text: str


class ImageDetail(msgspec.Struct):
    id: int
    sha256: str
    source: str | None
    width: int | None  # these four are null until a worker has decoded an image added with SQL
    height: int | None
    format: str | None
    mime: str | None
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
    video: FrameVideo | None = None  # set for a frame of a video


class UploadResponse(msgspec.Struct):
    id: int
    created: bool
    queue_state: str | None
    url: str


class VideoDetail(msgspec.Struct):
    """One stored video; its frames are images (``frames`` of them stored)."""

    id: int
    sha256: str
    source: str | None
    byte_size: int
    mime: str
    container: str
    duration_s: float | None
    frame_interval_s: float
    width: int
    height: int
    created_at: dt.datetime
    frames: int
    original_url: str

    @classmethod
    def of(cls, video: Video) -> VideoDetail:
        return cls(**dataclasses.asdict(video), original_url=f"/api/videos/{video.id}/original")


class VideoUploadResponse(msgspec.Struct):
    """An uploaded video: stored with its frames, each queued for embedding like an uploaded image."""

    video: VideoDetail
    created: bool  # False: a video with the same bytes was stored already (nothing added)
    frame_ids: list[int]  # the images its frames are
    url: str


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


class ImageEdit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Changes to one image. Vectors are untouched: edits never re-embed."""

    metadata: dict[str, Any] | None = None
    metadata_mode: Literal["merge", "replace"] = "merge"
    unset_metadata: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=100)] = []
    # ISO 8601 text (a date, or a date and time; no offset means UTC), checked by core.times.
    taken_at: Annotated[str, msgspec.Meta(max_length=64)] | None | msgspec.UnsetType = msgspec.UNSET
    captions_add: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]], msgspec.Meta(max_length=100)] = []
    captions_remove: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=2**62)]], msgspec.Meta(max_length=1000)] = []


class IndexBuild(msgspec.Struct):
    """How a deferred build made the index (absent for indexes made otherwise)."""

    seconds: float
    maintenance_work_mem: str
    vectors: int
    at: str  # ISO 8601, UTC
    by: str  # the process (application_name) that built it


class IndexState(msgspec.Struct):
    kind: Literal["hnsw", "ivfflat", "none"]
    storage: Literal["vector", "halfvec"]
    params: dict[str, int]  # as built (m, ef_construction; lists) and searched (ef_search; probes)
    # The params chosen from the collection's size when the index was built, rather than fixed
    # (PGCLIP_HNSW_M / PGCLIP_HNSW_EF_CONSTRUCTION, a rebuild's m / ef_construction).
    by_size: list[str]
    # The graph a rebuild would choose by size now that the collection has grown past the size
    # the index was built for; null when the built one is still the right one.
    outgrown: dict[str, int] | None
    size_bytes: int | None
    valid: bool | None
    # built; building (progress 0..1); deferred (no index yet: built once the model's backlog
    # drains, or at activation); invalid (a build was interrupted: built again the same way);
    # none (kind none). Anything but built: searches rank this model's vectors exactly.
    state: Literal["built", "building", "deferred", "invalid", "none"]
    exact_search: bool
    progress: float | None
    build: IndexBuild | None


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
    by_size: bool = False  # HNSW: m and ef_construction from the collection's size again, forgetting fixed ones
    ef_search: Positive | None = None
    lists: Positive | None = None
    probes: Positive | None = None


class IndexRebuildResponse(msgspec.Struct):
    model: ModelInfo
    built: bool  # False: only query-time settings changed, or the index was dropped (kind none)
    seconds: float


class TagRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Zero-shot tags (`pgclip tag`): every image of the active model gets its nearest label
    under ``key`` and that label's score under ``<key>_score``."""

    labels: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_CHARS)]],
                      msgspec.Meta(min_length=1, max_length=MAX_LABELS, description="distinct labels")]
    prompt: Annotated[str, msgspec.Meta(max_length=1000, description="holds one {} where each label goes")] = (
        "a photo of a {}")
    key: Annotated[str, msgspec.Meta(pattern=KEY_PATTERN, description="the metadata key to write")] = "tag"
    min_score: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0, description="cosine similarity a best label "
                                             "must reach; images under it lose the key")] | None = None
    dry_run: bool = False  # count, write nothing
    overwrite: bool = False  # replace values under key that no tag run wrote (else the run is refused, 400)


class TagCount(msgspec.Struct):
    label: str
    images: int


class TagResponse(msgspec.Struct):
    model: str
    key: str
    counts: list[TagCount]  # in the order of the request's labels
    below: int  # embedded images whose best label scored under min_score: untagged
    changed: int  # images whose metadata this request changed (0 for a dry run)
    dry_run: bool


# --- multipart forms ---------------------------------------------------------------


class ImageSearchForm(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Multipart: the query image, optional text to add, and the search options as JSON."""

    file: UploadFile | None = None
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None
    options: Annotated[str, msgspec.Meta(max_length=MAX_FORM_JSON)] | None = None


class UploadForm(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Multipart: the image, optional captions (a JSON list of strings, or one caption as plain
    text) and optional metadata (a JSON object)."""

    file: UploadFile | None = None
    captions: Annotated[str, msgspec.Meta(max_length=MAX_FORM_JSON)] | None = None
    metadata: Annotated[str, msgspec.Meta(max_length=MAX_FORM_JSON)] | None = None


# --- what every client value passes ----------------------------------------------------

# What the depth check looks at: an escape (two bytes), a quote, a bracket. One left-to-right
# pass over these, so the cost is linear in the body whatever it holds (a regex matching whole
# string literals backtracks quadratically on an unterminated string full of escaped quotes).
_JSON_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)
# NUL: PostgreSQL text and jsonb cannot hold it. Surrogates: not characters; UTF-8 cannot encode them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A \uD800-\uDBFF escape not followed by a low one, or a \uDC00-\uDFFF escape on its own.
_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def check_json_depth(raw: bytes | str, where: str) -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` before any parser recurses into it.

    Counts brackets outside string literals; malformed text is left to the parser, which
    fails on it without recursing further than this count.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = 0
    in_string = False
    for token in _JSON_TOKENS.finditer(data):
        char = token.group()
        if in_string:
            in_string = char != b'"'  # an escape (\" included) stays inside the string
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InvalidInput(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        elif char in (b"]", b"}"):
            depth -= 1
            if depth < 0:
                return  # a closing bracket too many: malformed, the parser says so


def _key(path: str, key: Any) -> str:
    name = key if isinstance(key, str) and key.isidentifier() else json.dumps(str(key)[:40])
    return f"{path}.{name}" if path else name


def _check_string(text: str, where: str) -> None:
    found = _UNSTORABLE.search(text)
    if found:
        what = "NUL characters (\\u0000)" if found.group() == "\x00" else "lone UTF-16 surrogates"
        raise InvalidInput(f"{where or 'the request body'}: {what} are not allowed")


def check_text(value: Any, where: str) -> None:
    """Refuse NUL characters and lone surrogates in any string of ``value`` (keys included),
    naming where: PostgreSQL cannot store them and UTF-8 cannot encode surrogates, so the
    API refuses them on the way in rather than stripping some and failing on others."""
    stack = [(value, where)]  # a loop, not recursion: this runs before any depth is known to be sane
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                child = _key(path, key)
                if isinstance(key, str):
                    _check_string(key, f"{child} (a key)")
                stack.append((sub, child))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(item))


def json_error(raw: bytes | str, exc: Exception) -> str:
    """msgspec's message, or a plain one where msgspec's misleads (a lone surrogate escape
    reads as "Input data was truncated")."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONE_SURROGATE_ESCAPE.search(data):
        return "a \\uD800-\\uDFFF escape without its pair is not a character (lone UTF-16 surrogate)"
    return str(exc)


def decode_json(raw: str, kind: Any, where: str) -> Any:
    """Client JSON held in a form field or a query parameter, as ``kind``: depth checked first,
    then decoded, then every string checked; any problem is an InvalidInput naming ``where``."""
    _check_string(raw, where)
    check_json_depth(raw, where)
    try:
        value = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"{where}: {json_error(raw, exc)}") from None
    check_text(msgspec.to_builtins(value), where)
    return value
