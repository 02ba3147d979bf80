"""HTTP routes. Each handler parses, calls the service off the event loop, and shapes the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Response, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import JSONBody, MultipartBody, Parameter

from pgclip.api.auth import require_write_key
from pgclip.api.schemas import (
    Activation,
    ActivationResponse,
    Filters,
    ImageDetail,
    ImageEdit,
    IndexRebuild,
    IndexRebuildResponse,
    ModelInfo,
    Result,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    UploadResponse,
)
from pgclip.api.service import Service
from pgclip.db.images import UNSET
from pgclip.db.search import Page
from pgclip.errors import InvalidInput

ServiceDep = NamedDependency[Service]  # provided by create_app
ImageId = Annotated[int, Parameter(ge=1, le=2**62, description="image id")]


def _options(opts: SearchOptions) -> dict[str, Any]:
    return {
        "caption_query": opts.caption_query, "filters": opts.filters.as_sql(), "k": opts.k, "fusion": opts.fusion,
        "weight": opts.weight, "min_similarity": opts.min_similarity, "max_drop": opts.max_drop,
        "order": opts.order, "cursor": opts.cursor,
    }


def _page(page: Page) -> SearchResponse:
    return SearchResponse(
        results=[
            Result(
                id=h.image_id, score=h.score, similarity=h.similarity, text_rank=h.text_rank,
                vector_rank=h.vector_rank, text_rank_position=h.text_rank_position, source=h.source, width=h.width,
                height=h.height, format=h.format, taken_at=h.taken_at, metadata=h.metadata, caption=h.caption,
                thumbnail_url=f"/api/images/{h.image_id}/thumbnail" if h.has_thumbnail else None,
                url=f"/api/images/{h.image_id}",
            )
            for h in page.hits
        ],
        next_cursor=page.next_cursor,
        model=page.model,
    )


def _json_field(raw: str | None, kind: type, name: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"{name}: {exc}") from None


async def _read_upload(upload: UploadFile | None, name: str = "file") -> bytes:
    if upload is None or not isinstance(upload, UploadFile):
        raise InvalidInput(f"the multipart field {name!r} must be an image file")
    data = await upload.read()
    if not data:
        raise InvalidInput(f"the uploaded {name!r} is empty")
    return data


@dataclasses.dataclass
class ImageSearchForm:
    """Multipart: the query image, optional text to add, and the search options as JSON."""

    file: UploadFile | None = None
    text: str | None = None
    options: str | None = None


@dataclasses.dataclass
class UploadForm:
    """Multipart: the image, optional captions (a JSON list of strings, or one caption as plain
    text) and optional metadata (a JSON object)."""

    file: UploadFile | None = None
    captions: str | None = None
    metadata: str | None = None


async def _detail(service: Service, image_id: int) -> ImageDetail:
    d = await asyncio.to_thread(service.image, image_id)
    return ImageDetail(
        id=d["id"], sha256=d["sha256"], source=d["source"], width=d["width"], height=d["height"],
        format=d["format"], mime=d["mime"], byte_size=d["byte_size"], taken_at=d["taken_at"],
        created_at=d["created_at"], metadata=d["metadata"], captions=d["captions"], model=d["model"],
        embedded=d["embedded"], queue_state=d["queue_state"], last_error=d["last_error"],
        thumbnail_url=f"/api/images/{image_id}/thumbnail" if d["has_thumbnail"] else None,
        original_url=f"/api/images/{image_id}/original",
    )


class SearchController(Controller):
    path = "/api/search"
    tags = ["search"]

    @post("/", status_code=200, summary="Search by text, caption words, a vector, or any mix")
    async def search(self, data: JSONBody[SearchRequest], service: ServiceDep) -> SearchResponse:
        page = await asyncio.to_thread(service.search, text=data.text, raw=data.vector, image=None, options=_options(data))
        return _page(page)

    @post("/image", status_code=200, summary="Search by an uploaded image (plus the same options)")
    async def search_image(
        self, data: MultipartBody[ImageSearchForm], service: ServiceDep
    ) -> SearchResponse:
        image = await _read_upload(data.file)
        opts = _json_field(data.options, SearchOptions, "options") or SearchOptions()
        page = await asyncio.to_thread(service.search, text=data.text, raw=None, image=image, options=_options(opts))
        return _page(page)


class ImageController(Controller):
    path = "/api/images"
    tags = ["images"]

    @get("/{image_id:int}", summary="An image's metadata, captions and embedding state")
    async def detail(self, image_id: ImageId, service: ServiceDep) -> ImageDetail:
        return await _detail(service, image_id)

    @patch("/{image_id:int}", guards=[require_write_key], summary="Edit metadata, date and captions (no re-embed)")
    async def edit(self, image_id: ImageId, data: JSONBody[ImageEdit], service: ServiceDep) -> ImageDetail:
        taken_at = data.taken_at if data.taken_at is not msgspec.UNSET else UNSET
        await asyncio.to_thread(
            service.edit_image, image_id, metadata=data.metadata, replace=data.metadata_mode == "replace",
            unset=data.unset_metadata, taken_at=taken_at, add=data.captions_add, remove=data.captions_remove,
        )
        return await _detail(service, image_id)

    @delete("/{image_id:int}", guards=[require_write_key], status_code=204, summary="Delete an image and all it has")
    async def remove(self, image_id: ImageId, service: ServiceDep) -> None:
        await asyncio.to_thread(service.delete_image, image_id)


    @get("/{image_id:int}/similar", summary="More like this: the nearest images to one image")
    async def similar(
        self,
        image_id: ImageId,
        service: ServiceDep,
        k: Annotated[int, Parameter(ge=1, le=100)] = 10,
        cursor: Annotated[str | None, Parameter(max_length=512)] = None,
        filters: Annotated[str | None, Parameter(description="filters as a JSON object", max_length=20000)] = None,
    ) -> SearchResponse:
        parsed = _json_field(filters, Filters, "filters") or Filters()
        options = _options(SearchOptions(filters=parsed, k=k, cursor=cursor))
        options.pop("caption_query")
        return _page(await asyncio.to_thread(service.similar, image_id, options))

    @get("/{image_id:int}/thumbnail", summary="The WebP thumbnail (once embedded)", media_type="image/webp")
    async def thumbnail(self, image_id: ImageId, service: ServiceDep) -> Response[bytes]:
        data, mime = await asyncio.to_thread(service.blob, image_id, "thumbnails")
        return Response(data, media_type=mime, headers={"Cache-Control": "public, max-age=3600"})

    @get("/{image_id:int}/original", summary="The original bytes as uploaded", media_type="application/octet-stream")
    async def original(self, image_id: ImageId, service: ServiceDep) -> Response[bytes]:
        data, mime = await asyncio.to_thread(service.blob, image_id, "image_blobs")
        # The bytes never change for an id (the id is tied to their sha256).
        return Response(data, media_type=mime, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @post("/", status_code=202, guards=[require_write_key], summary="Upload an image (queued for embedding)")
    async def upload(
        self, data: MultipartBody[UploadForm], service: ServiceDep
    ) -> UploadResponse:
        image = await _read_upload(data.file)
        captions = _captions(data.captions)
        metadata = _json_field(data.metadata, dict[str, Any], "metadata") or {}
        filename = data.file.filename if data.file is not None else None
        image_id, created, state = await asyncio.to_thread(
            service.add_image, image, filename=filename, captions=captions, metadata=metadata
        )
        return UploadResponse(id=image_id, created=created, queue_state=state, url=f"/api/images/{image_id}")


def _captions(raw: str | None) -> list[str]:
    if raw is None or not raw.strip():
        return []
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"captions: not a JSON list ({exc.msg})") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput("captions: expected a JSON list of strings")
        return value
    return [raw]


ModelId = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="model id (GET /api/models lists them)")]


class ModelController(Controller):
    path = "/api/models"
    tags = ["models"]

    @get("/", summary="The CLIP models: state, coverage, and each one's vector index")
    async def models(self, service: ServiceDep) -> list[ModelInfo]:
        return msgspec.convert(await asyncio.to_thread(service.models), list[ModelInfo])

    @post("/{model_id:int}/activate", status_code=200, guards=[require_write_key],
          summary="Switch searches to this model (409 while some images have no vector for it, unless forced)")
    async def activate(self, model_id: ModelId, service: ServiceDep,
                       data: JSONBody[Activation | None] = None) -> ActivationResponse:
        info, previous = await asyncio.to_thread(service.activate, model_id, force=bool(data and data.force))
        return ActivationResponse(active=msgspec.convert(info, ModelInfo), previous=previous)

    @post("/{model_id:int}/index", status_code=200, guards=[require_write_key],
          summary="Rebuild the model's vector index (CREATE INDEX CONCURRENTLY: searches keep answering)")
    async def rebuild_index(self, model_id: ModelId, data: JSONBody[IndexRebuild],
                            service: ServiceDep) -> IndexRebuildResponse:
        info, built, seconds = await asyncio.to_thread(service.rebuild_index, model_id, msgspec.structs.asdict(data))
        return IndexRebuildResponse(model=msgspec.convert(info, ModelInfo), built=built, seconds=seconds)


class SystemController(Controller):
    tags = ["system"]

    @get("/api/status", summary="Queue figures: counts by state, throughput, ETA, failures")
    async def status(self, service: ServiceDep) -> dict[str, Any]:
        return await asyncio.to_thread(service.status)

    @get("/api/duplicates", summary="Groups of near-identical images (resized, re-encoded, cropped copies)")
    async def duplicates(
        self, service: ServiceDep,
        threshold: Annotated[float, Parameter(ge=0.5, le=1.0, description="cosine similarity, 0.5-1")] = 0.95,
    ) -> dict[str, Any]:
        return await asyncio.to_thread(service.duplicates, threshold)

    @get("/healthz", summary="The process is up", media_type=MediaType.JSON)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="The database is reachable and migrated to head", media_type=MediaType.JSON)
    async def readyz(self, service: ServiceDep) -> dict[str, str]:
        await asyncio.to_thread(service.ready)
        return {"status": "ready"}
