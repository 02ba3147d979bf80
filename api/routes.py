"""HTTP routes. Each handler parses, calls the service off the event loop, and shapes the answer.

Every controller here reads requests through ``CheckedRequest`` and ``check_request``:
client text and JSON are checked (depth, NUL, surrogates, unknown or repeated form
fields) before Litestar parses them further, so no client input reaches a layer that
would fail on it with a 500.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, SerializationException
from litestar.params import HeaderParameter, JSONBody, MultipartBody, Parameter

from pgclip.api.auth import require_write_key
from pgclip.api.schemas import (
    Activation,
    ActivationResponse,
    Filters,
    FrameVideo,
    ImageDetail,
    ImageEdit,
    ImageSearchForm,
    IndexRebuild,
    IndexRebuildResponse,
    ModelInfo,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    TagCount,
    TagRequest,
    TagResponse,
    UploadForm,
    UploadResponse,
    VideoDetail,
    VideoUploadResponse,
    check_json_depth,
    check_text,
    decode_json,
    json_error,
)
from pgclip.application.service import Service
from pgclip.core.errors import InvalidInput
from pgclip.core.search_request import MAX_FILTERS_JSON, PARAMS
from pgclip.core.times import parse_time
from pgclip.db.images import UNSET
from pgclip.workers.video import is_video

ServiceDep = NamedDependency[Service]  # provided by create_app
LARGE_BODY_BYTES = 64 * 1024
ImageId = Annotated[int, Parameter(ge=1, le=2**62, description="image id")]
K, CURSOR = PARAMS["k"], PARAMS["cursor"]  # the query parameters of "more like this"


class CheckedRequest(Request):
    """A request whose JSON body is checked for depth before it is parsed and for
    unstorable text after (see ``schemas.check_json_depth`` and ``check_text``)."""

    async def json(self) -> Any:
        body = await self.body()
        if len(body) > LARGE_BODY_BYTES:  # a linear scan still takes ~1 s per 10 MB: off the event loop
            await asyncio.to_thread(check_json_depth, body, "the request body")
        else:
            check_json_depth(body, "the request body")
        try:
            value = await super().json()
        except SerializationException as exc:  # malformed JSON: Litestar's own 400, with a clearer message
            raise InvalidInput(f"the request body is not valid JSON: {json_error(body, exc)}") from None
        check_text(value, "")
        return value


async def check_request(request: Request) -> None:
    """Before any handler: refuse NUL and repeats in query parameters, and check a multipart
    form (``opt={"form": Struct}`` on the handler) for unknown, repeated and unstorable fields."""
    declared = request.route_handler.parsed_fn_signature.parameters
    for name in dict.fromkeys(request.query_params.keys()):
        values = request.query_params.getall(name)
        for value in values:
            check_text(value, f"query parameter {name!r}")
        if len(values) > 1 and name in declared and not declared[name].is_non_string_sequence:
            raise InvalidInput(f"the query parameter {name!r} is given {len(values)} times; send it once")
    form_type = request.route_handler.opt.get("form")
    if form_type is None:
        return
    try:
        # Parsed once here and cached on the connection; Litestar's body extraction reuses it.
        form = await request.form()
    except LookupError:  # a part's Content-Type names a charset Python does not know
        raise InvalidInput("a form field declares an unknown charset: send text parts as UTF-8") from None
    known = form_type.__struct_fields__
    for name in dict.fromkeys(form.keys()):
        if name not in known:
            raise InvalidInput(f"unknown form field {name[:40]!r} (known: {', '.join(known)})")
        values = form.getall(name)
        if len(values) > 1:
            raise InvalidInput(f"the form field {name!r} is given {len(values)} times; send it once")
        value = values[0]
        if isinstance(value, UploadFile):
            check_text(value.filename, f"{name} (file name)")
        else:
            check_text(value, name)


class ApiController(Controller):
    """The API's controllers: every request checked as above before its handler runs."""

    request_class = CheckedRequest
    before_request = check_request


def _json_field(raw: str | None, kind: Any, name: str) -> Any:
    if raw is None or raw == "":
        return None
    return decode_json(raw, kind, name)


async def _read_upload(upload: UploadFile | None, name: str = "file") -> bytes:
    if upload is None or not isinstance(upload, UploadFile):
        raise InvalidInput(f"the multipart field {name!r} must be an image file")
    data = await upload.read()
    if not data:
        raise InvalidInput(f"the uploaded {name!r} is empty")
    return data


async def _detail(service: Service, image_id: int) -> ImageDetail:
    d = await asyncio.to_thread(service.image, image_id)
    return ImageDetail(
        id=d["id"], sha256=d["sha256"], source=d["source"], width=d["width"], height=d["height"],
        format=d["format"], mime=d["mime"], byte_size=d["byte_size"], taken_at=d["taken_at"],
        created_at=d["created_at"], metadata=d["metadata"], captions=d["captions"], model=d["model"],
        embedded=d["embedded"], queue_state=d["queue_state"], last_error=d["last_error"],
        thumbnail_url=f"/api/images/{image_id}/thumbnail" if d["has_thumbnail"] else None,
        original_url=f"/api/images/{image_id}/original", video=FrameVideo.of(d["video"]),
    )


class SearchController(ApiController):
    path = "/api/search"
    tags = ["search"]

    @post("/", status_code=200, summary="Search by text, caption words, a vector, or any mix")
    async def search(self, data: JSONBody[SearchRequest], service: ServiceDep) -> SearchResponse:
        page = await asyncio.to_thread(service.search, text=data.text, raw=data.vector, image=None,
                                       options=data.as_options())
        return SearchResponse.of(page)

    @post("/image", status_code=200, summary="Search by an uploaded image (plus the same options)",
          opt={"form": ImageSearchForm})
    async def search_image(
        self, data: MultipartBody[ImageSearchForm], service: ServiceDep
    ) -> SearchResponse:
        image = await _read_upload(data.file)
        opts = _json_field(data.options, SearchOptions, "options") or SearchOptions()
        page = await asyncio.to_thread(service.search, text=data.text, raw=None, image=image,
                                       options=opts.as_options())
        return SearchResponse.of(page)


class ImageController(ApiController):
    path = "/api/images"
    tags = ["images"]

    @get("/{image_id:int}", summary="An image's metadata, captions and embedding state")
    async def detail(self, image_id: ImageId, service: ServiceDep) -> ImageDetail:
        return await _detail(service, image_id)

    @patch("/{image_id:int}", guards=[require_write_key], summary="Edit metadata, date and captions (no re-embed)")
    async def edit(self, image_id: ImageId, data: JSONBody[ImageEdit], service: ServiceDep) -> ImageDetail:
        taken_at = UNSET if data.taken_at is msgspec.UNSET else (
            None if data.taken_at is None else parse_time("taken_at", data.taken_at))
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
        k: Annotated[int, Parameter(ge=K.minimum, le=K.maximum, description=K.help)] = K.default,
        cursor: Annotated[str | None, Parameter(max_length=CURSOR.max_length, description=CURSOR.help)] = None,
        filters: Annotated[str | None, Parameter(description="filters as a JSON object",
                                                 max_length=MAX_FILTERS_JSON)] = None,
    ) -> SearchResponse:
        parsed = _json_field(filters, Filters, "filters") or Filters()
        options = SearchOptions(filters=parsed, k=k, cursor=cursor).as_options()
        options.pop("caption_query")  # "more like this" searches by the image's own vector alone
        return SearchResponse.of(await asyncio.to_thread(service.similar, image_id, options))

    @get("/{image_id:int}/thumbnail", summary="The WebP thumbnail (once embedded)", media_type="image/webp")
    async def thumbnail(self, image_id: ImageId, service: ServiceDep) -> Response[bytes]:
        blob = await asyncio.to_thread(service.blob, image_id, "thumbnails")
        return Response(blob.data, media_type=blob.mime, headers={"Cache-Control": "public, max-age=3600"})

    @get("/{image_id:int}/original", summary="The original bytes as uploaded (ETag: their sha256)",
         media_type="application/octet-stream")
    async def original(
        self, image_id: ImageId, service: ServiceDep,
        if_none_match: Annotated[str | None, HeaderParameter(
            name="If-None-Match", required=False, description="an ETag this client holds: 304 if still current")] = None,
    ) -> Response[bytes]:
        blob = await asyncio.to_thread(service.blob, image_id, "image_blobs")
        # Not immutable: `pgclip sync` gives an edited file's image its new bytes under the same
        # id. Caches keep the bytes and ask again each time (304 while the sha256 is the same).
        etag = f'"{blob.sha256}"'
        headers = {"Cache-Control": "public, no-cache", "ETag": etag}
        held = {tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")}
        if etag in held or "*" in held:
            return Response(b"", status_code=304, media_type=blob.mime, headers=headers)
        return Response(blob.data, media_type=blob.mime, headers=headers)

    @post("/", status_code=202, guards=[require_write_key],
          summary="Upload an image, or a video (its sampled frames become images); queued for embedding",
          opt={"form": UploadForm})
    async def upload(
        self, data: MultipartBody[UploadForm], service: ServiceDep
    ) -> UploadResponse | VideoUploadResponse:
        image = await _read_upload(data.file)
        captions = _captions(data.captions)
        metadata = _json_field(data.metadata, dict[str, Any], "metadata") or {}
        filename = data.file.filename if data.file is not None else None
        if is_video(image, filename):
            return await _upload_video(service, image, filename, captions, metadata)
        if len(image) > service.settings.upload_max_bytes:  # this route takes videos' larger bodies
            raise HTTPException(status_code=413, detail=f"the image has {len(image)} bytes, more than the "
                                f"{service.settings.upload_max_bytes} an image may have (PGCLIP_UPLOAD_MAX_BYTES)")
        image_id, created, state = await asyncio.to_thread(
            service.add_image, image, filename=filename, captions=captions, metadata=metadata
        )
        return UploadResponse(id=image_id, created=created, queue_state=state, url=f"/api/images/{image_id}")


async def _upload_video(service: Service, data: bytes, filename: str | None, captions: list[str],
                        metadata: dict[str, Any]) -> VideoUploadResponse:
    video_id, created, frame_ids = await asyncio.to_thread(
        service.add_video, data, filename=filename, captions=captions, metadata=metadata
    )
    video = VideoDetail.of(await asyncio.to_thread(service.video, video_id))
    return VideoUploadResponse(video=video, created=created, frame_ids=frame_ids, url=f"/api/videos/{video_id}")


def _captions(raw: str | None) -> list[str]:
    if raw is None or not raw.strip():
        return []
    if raw.lstrip().startswith("["):
        return decode_json(raw, list[str], "captions")
    if raw.strip().startswith('"') and raw.strip().endswith('"') and len(raw.strip()) > 1:
        return [decode_json(raw, str, "captions")]  # one caption as a JSON string: its text, not its quotes
    return [raw]  # one caption as plain text


ModelId = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="model id (GET /api/models lists them)")]


class ModelController(ApiController):
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
    async def rebuild_index(self, model_id: ModelId, service: ServiceDep,
                            data: JSONBody[IndexRebuild | None] = None) -> IndexRebuildResponse:
        # No body: rebuilt as it is (as `pgclip index rebuild` without options), like /activate's.
        params = msgspec.structs.asdict(data or IndexRebuild())
        info, built, seconds = await asyncio.to_thread(service.rebuild_index, model_id, params)
        return IndexRebuildResponse(model=msgspec.convert(info, ModelInfo), built=built, seconds=seconds)


class SystemController(ApiController):
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

    @post("/api/tags", status_code=200, guards=[require_write_key],
          summary="Zero-shot tags: each image's nearest label and its score written into its metadata")
    async def tag(self, data: JSONBody[TagRequest], service: ServiceDep) -> TagResponse:
        model, run = await asyncio.to_thread(service.tag, data.labels, prompt=data.prompt, key=data.key,
                                             min_score=data.min_score, dry_run=data.dry_run,
                                             overwrite=data.overwrite)
        return TagResponse(model=model.name, key=data.key, counts=[TagCount(c.label, c.images) for c in run.counts],
                           below=run.below, changed=run.changed, dry_run=data.dry_run)

    @get("/healthz", summary="The process is up", media_type=MediaType.JSON)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="The database is reachable and migrated to head", media_type=MediaType.JSON)
    async def readyz(self, service: ServiceDep) -> dict[str, str]:
        await asyncio.to_thread(service.ready)
        return {"status": "ready"}
