"""Hostile requests to every operation the served OpenAPI schema declares: none may answer 5xx.

Each class of hostile value (JSON nested 2,000 deep, NUL, lone surrogates, invalid UTF-8,
numbers beyond 64 bits, unknown, repeated and oversized form parts) goes into every path
parameter, query parameter, JSON body field (nested ones too) and form field of every
operation, and whole hostile bodies go to every operation that takes one. Every 4xx must be
the API's JSON error body. The routes come from the schema, so a new route is covered the day
it is added.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

import httpx
import pytest

from pgclip.api.schemas import MAX_JSON_DEPTH
from tests.acceptance.test_api import served  # noqa: F401  (the running server fixture)
from tests.images import jpeg_bytes
from tests.videos import video_bytes

pytestmark = pytest.mark.slow

DEEP = 2000  # levels: past Python's recursion limit and PostgreSQL's default stack depth
BIG = 2**70
JPEG = jpeg_bytes(4242, (40, 30))
UPLOAD_LIMIT = 2_000_000  # PGCLIP_UPLOAD_MAX_BYTES of the `served` fixture


def deep_array(n: int) -> bytes:
    return b"[" * n + b"]" * n


def deep_object(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


# Values put into JSON bodies, as raw JSON text (so that escapes and bad bytes reach the server as sent).
JSON_VALUES: dict[str, bytes] = {
    "deep array": deep_array(DEEP),
    "deep object": deep_object(DEEP),
    "one level too deep": deep_array(MAX_JSON_DEPTH + 1),
    "NUL": b'"a\\u0000b"',
    "NUL in a key": b'{"a\\u0000": 1}',
    "lone high surrogate": b'"a\\ud800b"',
    "lone low surrogate": b'"\\udc00"',
    "surrogate key": b'{"\\ud800": 1}',
    "invalid UTF-8": b'"\xff\xfe"',
    "UTF-8 of a surrogate": b'"\xed\xa0\x80"',
    "2**70": str(BIG).encode(),
    "-2**70": str(-BIG).encode(),
    "1e400": b"1e400",
    "4400 digits": b"9" * 4400,
    "1e-400": b"1e-400",
    "2**70 as an image id in a composed query": b'"#%d + dog"' % BIG,
}

# Values put into query parameters and form fields, as raw bytes.
TEXT_VALUES: dict[str, bytes] = {
    "deep JSON array": deep_array(DEEP),
    "deep JSON object": deep_object(DEEP),
    "NUL": b"a\x00b",
    "escaped NUL in JSON": b'{"metadata": {"a\\u0000": "\\u0000"}, "text": "\\u0000"}',
    "lone surrogate in JSON": b'["\\ud800"]',
    "UTF-8 of a surrogate": b"\xed\xa0\x80",
    "invalid UTF-8": b"\xff\xfe",
    "2**70": str(BIG).encode(),
    "-2**70": str(-BIG).encode(),
    "1e400": b"1e400",
    "nan": b"nan",
    "-1": b"-1",
    "2**70 in JSON": b'{"k": %d, "filters": {"exclude_ids": [%d], "metadata": {"a": %d}}}' % (BIG, BIG, BIG),
    "1e400 in JSON": b'{"k": 1e400, "filters": {"metadata": {"a": 1e400}}}',
    "5,000 characters": b"x" * 5000,  # longer than any text field; a query string much longer is the HTTP server's to refuse
}

# Whole request bodies for operations that take one.
BODIES: dict[str, bytes] = {
    "deep array": deep_array(DEEP),
    "deep object": deep_object(DEEP),
    "NUL string": b'"\\u0000"',
    "raw NUL": b'{"text": "a\x00"}',
    "surrogate key": b'{"\\ud800": 1}',
    "invalid UTF-8": b"\xff\xfe{}",
    "1e400": b"1e400",
    "2**70": str(BIG).encode(),
    "truncated": b'{"text": ',
    "empty": b"",
    "null": b"null",
    "list": b"[]",
    "repeated key": b'{"k": 1, "k": 2}',
    "oversized": b'{"text": "' + b"x" * (UPLOAD_LIMIT + 1000) + b'"}',
}

PATH_VALUES = [str(BIG), "-1", "0", "1e400", "1.5", "%00", "%ED%A0%80", "9" * 400]


@dataclass
class Operation:
    method: str
    template: str
    fill: dict[str, str]  # path parameter -> a valid value
    query: dict[str, dict]  # name -> parameter object
    json_fields: list[tuple[str, ...]] = field(default_factory=list)  # field paths, nested ones too
    form: dict[str, dict] | None = None  # multipart: name -> property schema

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def path(self) -> str:
        return self.path_with()

    def path_with(self, **values: str) -> str:
        """The path with its parameters filled: ``values`` where given, valid ones elsewhere."""
        path = self.template
        for name, value in (self.fill | values).items():
            path = path.replace("{" + name + "}", value)
        return path


def _resolve(schema: dict, spec: dict) -> dict:
    """A schema with its $ref followed and a nullable oneOf reduced to its non-null member."""
    while True:
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        elif "oneOf" in schema:
            members = [m for m in schema["oneOf"] if m.get("type") != "null"]
            if len(members) != 1:
                return schema
            schema = {**{k: v for k, v in schema.items() if k != "oneOf"}, **members[0]}
        else:
            return schema


def _field_paths(schema: dict, spec: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, prop in _resolve(schema, spec).get("properties", {}).items():
        yield (*prefix, name)
        if "properties" in _resolve(prop, spec):
            yield from _field_paths(prop, spec, (*prefix, name))


def operations(spec: dict, image_id: int, model_id: int, video_id: int) -> list[Operation]:
    valid = {"image_id": str(image_id), "model_id": str(model_id), "video_id": str(video_id)}
    found = []
    for template, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            # A KeyError here is a new kind of path parameter: give `valid` a value for it.
            fill = {p["name"]: valid[p["name"]] for p in params if p["in"] == "path"}
            operation = Operation(method.upper(), template, fill, {p["name"]: p for p in params if p["in"] == "query"})
            content = (op.get("requestBody") or {}).get("content", {})
            if "application/json" in content:
                operation.json_fields = list(_field_paths(content["application/json"]["schema"], spec))
            if "multipart/form-data" in content:
                operation.form = _resolve(content["multipart/form-data"]["schema"], spec)["properties"]
            found.append(operation)
    return found


def _nest(path: tuple[str, ...], value: bytes) -> bytes:
    for name in reversed(path):
        value = b'{"' + name.encode() + b'": ' + value + b"}"
    return value


def _query(op: Operation, **given: bytes) -> str:
    """The query string: ``given`` raw values percent-encoded as sent, plus required parameters filled."""
    values = {name: b"1" for name, p in op.query.items() if p.get("required")} | given
    return "&".join(f"{quote_from_bytes(k.encode(), safe='')}={quote_from_bytes(v, safe='')}" for k, v in values.items())


def _is_file(prop: dict) -> bool:
    return any(m.get("format") == "binary" for m in [prop, *prop.get("oneOf", [])])


def part(name: bytes, data: bytes, *, filename: bytes | None = None, content_type: bytes | None = None,
         disposition: bytes | None = None) -> bytes:
    head = disposition or b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
    lines = [b"Content-Disposition: " + head]
    if content_type or filename:
        lines.append(b"Content-Type: " + (content_type or b"image/jpeg"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def multipart(*parts: bytes, boundary: bytes = b"hostile-boundary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


def form_requests(op: Operation) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(label, body, headers) of every hostile multipart request for ``op``."""
    assert op.form is not None
    files = [n for n, p in op.form.items() if _is_file(p)]
    texts = [n for n in op.form if n not in files]
    image = [part(n.encode(), JPEG, filename=b"q.jpg") for n in files]
    for name in texts:
        for label, value in TEXT_VALUES.items():
            yield f"form field {name}={label}", *multipart(*image, part(name.encode(), value))
        yield f"form field {name} twice", *multipart(*image, part(name.encode(), b"a"), part(name.encode(), b"b"))
        yield f"form field {name} in an unknown charset", *multipart(
            *image, part(name.encode(), b"a", content_type=b"text/plain; charset=x-no-such-charset"))
        yield f"form field {name} oversized", *multipart(*image, part(name.encode(), b"x" * 1_500_000))
        yield f"form field {name} as a file", *multipart(*image, part(name.encode(), b"abc", filename=b"a.txt"))
    for name in files:
        others = [part(n.encode(), JPEG, filename=b"q.jpg") for n in files if n != name]
        for label, filename in {"NUL": b"a\x00.jpg", "surrogate bytes": b"\xed\xa0\x80.jpg",
                                "invalid UTF-8": b"\xff.jpg", "long": b"x" * 10_000}.items():
            yield f"file {name} named {label}", *multipart(*others, part(name.encode(), JPEG, filename=filename))
        yield f"file {name} named with an encoded NUL", *multipart(*others, part(
            name.encode(), JPEG, disposition=b"form-data; name=\"" + name.encode() + b"\"; filename*=UTF-8''a%00.jpg"))
        yield f"file {name} twice", *multipart(*image, part(name.encode(), JPEG, filename=b"r.jpg"))
        yield f"file {name} as text", *multipart(*others, part(name.encode(), b"\x89PNG\r\n\x1a\n\xff\xfe"))
        yield f"file {name} oversized", *multipart(*others, part(name.encode(), b"\xff" * (UPLOAD_LIMIT + 1), filename=b"b.jpg"))
    yield "unknown field k=-1", *multipart(*image, part(b"k", b"-1"))
    yield "unknown field filters", *multipart(*image, part(b"filters", b"{oops"))
    yield "unknown field with NUL in its name", *multipart(*image, part(b"a\x00b", b"1"))
    yield "1001 parts", *multipart(*image, *[part(b"text", b"a")] * 1001)
    yield "no parts", *multipart()
    yield "garbage", b"\xff\xfe not multipart", {"content-type": "multipart/form-data; boundary=x"}
    yield "no boundary", b"", {"content-type": "multipart/form-data"}
    yield "JSON instead", b'{"text": "a"}', {"content-type": "application/json"}


def hostile_requests(op: Operation) -> Iterator[tuple[str, str, bytes | None, dict[str, str]]]:
    """(label, URL, body, headers) of every hostile request for ``op``."""
    json_headers = {"content-type": "application/json"}
    for name in op.fill:
        for value in PATH_VALUES:
            yield f"path {name}={value[:20]}", op.path_with(**{name: value}), None, {}
    for name in op.query:
        for label, value in TEXT_VALUES.items():
            yield f"query {name}={label}", f"{op.path}?{_query(op, **{name: value})}", None, {}
        yield f"query {name} twice", f"{op.path}?{_query(op)}&{name}=1&{name}=2", None, {}
    url = f"{op.path}?{_query(op)}" if op.query else op.path
    for path in op.json_fields:
        for label, value in JSON_VALUES.items():
            for shape, wrapped in (("", value), (" in a list", b"[" + value + b"]"),
                                   (" in an object", b'{"k": ' + value + b"}")):
                # Beside a caption query, so that values which pass validation reach the SQL.
                body = _nest(path, wrapped)
                yield f"body {'.'.join(path)}={label}{shape}", url, body, json_headers
                if path != ("caption_query",) and op.template == "/api/search":
                    yield (f"body {'.'.join(path)}={label}{shape} with a caption query", url,
                           body[:-1] + b', "caption_query": "dog"}', json_headers)
    if op.json_fields or op.form is not None:
        for label, body in BODIES.items():
            yield f"whole body {label}", url, body, json_headers
    if op.form is not None:
        for label, body, headers in form_requests(op):
            yield label, url, body, headers


def problems(response: httpx.Response) -> str | None:
    """Why ``response`` is not an acceptable answer to a hostile request (None: it is)."""
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} without a JSON body: {response.text[:200]!r}"
        if body.get("status_code") != response.status_code or not isinstance(body.get("detail"), str) or not body["detail"]:
            return f"{response.status_code} with an unexpected body: {response.text[:300]}"
    return None


@pytest.fixture(scope="module")
def schema_ops(served):  # noqa: F811
    client, _, ids, _ = served
    spec = client.get("/schema/openapi.json").json()
    model_id = client.get("/api/models").json()[0]["id"]
    # A stored video, so that its routes are tried past their 404.
    upload = client.post("/api/images", files={"file": ("clip.webm", video_bytes(7, seconds=3), "video/webm")})
    assert upload.status_code == 202, upload.text
    return client, operations(spec, ids["img0009.jpg"], model_id, upload.json()["video"]["id"])


def test_no_hostile_request_to_any_route_is_a_server_error(schema_ops):
    client, ops = schema_ops
    assert len(ops) >= 17 and any(op.form for op in ops) and any(op.json_fields for op in ops)
    failures, sent = [], 0
    for op in ops:
        for label, url, body, headers in hostile_requests(op):
            response = client.request(op.method, url, content=body, headers=headers)
            sent += 1
            if (problem := problems(response)) is not None:
                failures.append(f"{op.label} {label}: {problem}")
    assert sent > 1000
    assert not failures, f"{len(failures)} of {sent} hostile requests failed:\n" + "\n".join(failures[:40])


def test_unknown_form_fields_are_refused_naming_them_on_every_multipart_route(schema_ops):
    client, ops = schema_ops
    multipart_ops = [op for op in ops if op.form is not None]
    assert {op.template for op in multipart_ops} >= {"/api/search/image", "/api/images"}
    for op in multipart_ops:
        files = [part(n.encode(), JPEG, filename=b"q.jpg") for n, p in op.form.items() if _is_file(p)]
        for name, value in ((b"k", b"-1"), (b"filters", b"{oops"), (b"colour", b"red")):
            response = client.post(op.path, content=(m := multipart(*files, part(name, value)))[0], headers=m[1])
            assert response.status_code == 400, (op.label, response.text)
            assert repr(name.decode()) in response.json()["detail"], response.text


def test_nul_is_refused_naming_the_field_in_every_text_field(schema_ops):
    """One rule everywhere: a NUL in any text the client sends is a 400 that names the field."""
    client, ops = schema_ops
    checked = 0
    NUL = b"a\x00b"
    for op in ops:
        for name in op.query:
            response = client.request(op.method, op.path + "?" + _query(op, **{name: NUL}))
            assert response.status_code == 400 and name in response.json()["detail"], (op.label, name, response.text)
            checked += 1
        for path in op.json_fields:
            response = client.request(op.method, op.path, content=_nest(path, b'"a\\u0000b"'),
                                      headers={"content-type": "application/json"})
            assert response.status_code == 400 and path[-1] in response.json()["detail"], (op.label, path, response.text)
            checked += 1
        for name, prop in (op.form or {}).items():
            files = [part(n.encode(), JPEG, filename=b"q.jpg") for n, p in op.form.items() if _is_file(p) and n != name]
            hostile = part(name.encode(), JPEG, filename=b"a\x00.jpg") if _is_file(prop) else part(name.encode(), b"a\x00b")
            body, headers = multipart(*files, hostile)
            response = client.request(op.method, op.path, content=body, headers=headers)
            assert response.status_code == 400 and name in response.json()["detail"], (op.label, name, response.text)
            checked += 1
    assert checked >= 25


def test_values_within_the_limits_are_accepted(served):  # noqa: F811
    client, _, ids, _ = served
    nested = json.loads(deep_object(MAX_JSON_DEPTH - 2))  # in the body and "metadata": exactly the limit
    response = client.patch(f"/api/images/{ids['img0008.jpg']}", json={"metadata": {"deep": nested, "big": BIG}})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["big"] == BIG
    found = client.post("/api/search", json={"caption_query": "dog", "filters": {"metadata": {"big": BIG}}})
    assert found.status_code == 200, found.text
    surrogate_pair = client.post("/api/search", content=b'{"text": "\\ud83d\\ude00 a dog"}',
                                 headers={"content-type": "application/json"})
    assert surrogate_pair.status_code == 200, surrogate_pair.text
