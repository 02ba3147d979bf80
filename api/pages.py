"""The web page: HTML shells, their static JS/CSS, and the two JSON endpoints only the page needs.

Every page is a static HTML shell (``static/pages/*.html``) whose script calls the
JSON API; nothing is fetched from the internet. The map and the similarity
heat-map need figures the search API does not give, so this module adds:

* ``GET /api/map?projection=pca|umap&color=KEY``: a 2-D projection of the active model's
  vectors, cached per projection until the vectors change (``application/atlas.py``), each
  point with its value for a metadata key when asked (read per request), and a legend;
* ``GET /api/similarity?ids=1,2,3``: the cosine similarity matrix of up to 25 images; with
  ``texts=["a dog","a cat"]`` (a JSON list) or ``captions=true``, images x texts instead.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.params import FromPath, Parameter
from litestar.static_files import create_static_files_router

from pgclip.api.routes import ApiController, ServiceDep
from pgclip.api.schemas import check_json_depth, check_text
from pgclip.application.atlas import (
    COLOR_KEY_MAX_CHARS,
    COLOR_VALUE_MAX_CHARS,
    LEGEND_MAX,
    MAP_MAX_POINTS,
    PROJECTIONS,
    SIMILARITY_MAX_IDS,
    SIMILARITY_MAX_TEXT_CHARS,
    SIMILARITY_MAX_TEXTS,
    check_color_key,
    check_projection,
    check_texts,
)
from pgclip.core.errors import InvalidInput

STATIC = Path(__file__).parent / "static"
MAX_ID = 2**62

NAV = (("/", "Search"), ("/map", "Map"), ("/duplicates", "Duplicates"), ("/status", "Status"), ("/upload", "Upload"))


# --- JSON: the map and the similarity matrix (computed in pgclip.application.atlas) ---------


class MapPoint(msgspec.Struct):
    id: int
    x: float
    y: float
    # With color: the image's value for that metadata key as text (null: it has none); absent without color.
    value: str | None | msgspec.UnsetType = msgspec.UNSET


class LegendEntry(msgspec.Struct):
    value: str | None  # null: the images without the key
    count: int


class MapResponse(msgspec.Struct):
    projection: str  # asked: "pca" or "umap"
    method: str  # computed: differs from projection where UMAP could not run (note says why)
    model: str
    total: int  # the model's vectors; points are a fixed sample beyond 20000
    points: list[MapPoint]
    keys: list[str]  # top-level metadata keys of these images, commonest first (for color)
    color: str | None = None
    legend: list[LegendEntry] | None = None  # with color: the commonest values, commonest first
    other: int = 0  # with color: points whose value is not in the legend
    note: str | None = None


class SimilarityMatrix(msgspec.Struct):
    ids: list[int]
    model: str
    matrix: list[list[float]]  # rows the images; columns the images, or the texts
    kind: str = "images"  # "images" (images x images) or "texts" (images x texts)
    texts: list[str] | None = None  # the columns when kind is "texts"
    # With captions=true: the image whose first caption each column is (images without one have no column).
    caption_of: list[int] | None = None


def parse_ids(raw: str) -> list[int]:
    """``"3, 1,2"`` -> ``[3, 1, 2]``: 1 to 25 positive integers; repeats are dropped, order kept."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise InvalidInput(f"ids: give 1 to {SIMILARITY_MAX_IDS} image ids, comma-separated (e.g. ids=1,2,3)")
    ids: list[int] = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= MAX_ID:
            raise InvalidInput(f"ids: {part[:40]!r} is not an image id (a positive integer)")
        if int(part) not in ids:
            ids.append(int(part))
    if len(ids) > SIMILARITY_MAX_IDS:
        raise InvalidInput(f"ids: at most {SIMILARITY_MAX_IDS} images, got {len(ids)}")
    return ids


def parse_texts(raw: str) -> list[str]:
    """``'["a dog", "a cat"]'`` -> the texts: a JSON list of 1 to 25 non-empty strings of at most 500."""
    wanted = 'texts: give a JSON list of strings, e.g. texts=["a dog","a cat"]'
    check_json_depth(raw, "texts")
    try:
        texts = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise InvalidInput(wanted) from None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidInput(wanted)
    check_text(texts, "texts")
    return check_texts(texts)


class VisualsController(ApiController):
    """Figures for the page's map and heat-map (JSON: checked like the rest of the API)."""

    tags = ["visuals"]

    @get("/api/map", summary=f"2-D projection (PCA or UMAP) of the active model's vectors (at most "
                              f"{MAP_MAX_POINTS}, sampled), coloured by a metadata key")
    async def map(
        self,
        service: ServiceDep,
        projection: Annotated[str, Parameter(
            description=f"{' or '.join(PROJECTIONS)}: PCA is fast; UMAP keeps neighbourhoods (computed once "
                        "per collection state, the first time in seconds to a minute)")] = PROJECTIONS[0],
        color: Annotated[str | None, Parameter(
            description=f"a top-level metadata key (at most {COLOR_KEY_MAX_CHARS} characters): each point gets "
                        f"its value as text (at most {COLOR_VALUE_MAX_CHARS}; null where missing), plus a "
                        f"legend of the {LEGEND_MAX} commonest values")] = None,
    ) -> MapResponse:
        check_projection(projection)
        if color is not None:
            check_color_key(color)
        pending = await asyncio.to_thread(service.projection, projection)
        # Awaited, not waited for in a thread: UMAP may take a minute. Shielded: a client that
        # goes away must not cancel the computation other requests are waiting for.
        found = await asyncio.shield(asyncio.wrap_future(pending))
        ids = [p.id for p in found.points]
        details = await asyncio.to_thread(service.map_details, ids, color)
        colours = details.colours
        if colours is None:
            points = [MapPoint(id=p.id, x=p.x, y=p.y) for p in found.points]
            legend = None
        else:
            points = [MapPoint(id=p.id, x=p.x, y=p.y, value=v) for p, v in zip(found.points, colours.values, strict=True)]
            legend = [LegendEntry(value=e.value, count=e.count) for e in colours.legend]
        return MapResponse(projection=found.projection, method=found.method, model=found.model, total=found.total,
                           points=points, keys=details.keys, color=color, legend=legend,
                           other=colours.other if colours else 0, note=found.note)

    @get("/api/similarity", summary="Cosine similarity matrix of up to 25 images, or of images x texts")
    async def similarity(
        self,
        service: ServiceDep,
        ids: Annotated[str, Parameter(description="image ids, comma-separated (1 to 25)", max_length=2000)],
        texts: Annotated[str | None, Parameter(
            description=f"a JSON list of 1 to {SIMILARITY_MAX_TEXTS} texts (each at most {SIMILARITY_MAX_TEXT_CHARS} "
                        "characters): the matrix is then images x texts",
            max_length=SIMILARITY_MAX_TEXTS * (SIMILARITY_MAX_TEXT_CHARS + 4) + 2)] = None,
        captions: Annotated[bool, Parameter(
            description="images x the first caption of each image that has one (instead of texts); "
                        "caption_of names the image of each column")] = False,
    ) -> SimilarityMatrix:
        chosen = parse_ids(ids)
        if texts is not None and captions:
            raise InvalidInput("give texts or captions=true, not both")
        wanted = parse_texts(texts) if texts is not None else None
        found = await asyncio.to_thread(service.similarity_matrix, chosen, wanted, captions=captions)
        if found.texts is None:
            return SimilarityMatrix(ids=found.ids, model=found.model, matrix=found.matrix)
        return SimilarityMatrix(ids=found.ids, model=found.model, matrix=found.matrix, kind="texts",
                                texts=found.texts, caption_of=found.caption_of)


# --- HTML ------------------------------------------------------------------------------


@functools.cache
def _shell(name: str) -> str:
    return (STATIC / "pages" / f"{name}.html").read_text(encoding="utf-8")


def _html(name: str, current: str | None) -> Response[str]:
    current_attr = ' aria-current="page"'
    nav = "".join(f'<a href="{href}"{current_attr if href == current else ""}>{label}</a>' for href, label in NAV)
    body = _shell(name).replace("{{nav}}", nav)
    return Response(body, media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})


class PageController(Controller):
    """The HTML pages (their data comes from the JSON API)."""

    include_in_schema = False

    @get("/", sync_to_thread=False)
    def search(self) -> Response[str]:
        return _html("search", "/")

    @get("/images/{image_id:str}", sync_to_thread=False)
    def image(self, image_id: FromPath[str]) -> Response[str]:
        return _html("image", None)  # the page says when the id is no image (/images/abc too)

    @get("/status", sync_to_thread=False)
    def status(self) -> Response[str]:
        return _html("status", "/status")

    @get("/map", sync_to_thread=False)
    def map(self) -> Response[str]:
        return _html("map", "/map")

    @get("/similarity", sync_to_thread=False)
    def similarity(self) -> Response[str]:
        return _html("similarity", None)

    @get("/duplicates", sync_to_thread=False)
    def duplicates(self) -> Response[str]:
        return _html("duplicates", "/duplicates")

    @get("/upload", sync_to_thread=False)
    def upload(self) -> Response[str]:
        return _html("upload", "/upload")


static_files = create_static_files_router(path="/static", directories=[STATIC], name="static")

ROUTE_HANDLERS = [VisualsController, PageController, static_files]
