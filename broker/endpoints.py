"""How an endpoint is declared, and how a request reaches it: one blueprint.

Each endpoint is declared once with `@endpoint(method, path, request model, reply model)`: the
declaration routes it, checks its `scope=` (produce, consume or admin: the verb a token must
hold for the request's topic, auth.py) before any other work, validates its input and
describes it in /openapi.json, so the contract cannot drift from the code. Parameters come
from the query string, a form body or a JSON body (whatever the method and Content-Type say),
merged in that order; a body is read and inflated within the limits by wire.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from . import auth, wire
from . import schemas as s
from .errors import BadRequest, UnsupportedEncoding
from .replies import Encoded

bp = Blueprint("api", __name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    request: type[s.Request] | None
    replies: tuple[type[s.Reply], ...]
    summary: str
    compress: bool = False  # replies compressed when the client accepts it (wire.py)
    scope: str | None = None  # auth.VERBS; None: any valid token


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, request_model: type[s.Request] | None,
             *replies: type[s.Reply], scope: str | None = None,
             compress: bool = False) -> Callable:
    """Route `view`, check its `scope`, parse its request model, serialize the reply model it
    returns, or send the body it encoded itself (replies.py: `replies` stay its schema);
    `compress`: compressed when the client sends Accept-Encoding."""
    assert scope is None or scope in auth.VERBS, scope

    def decorate(view: Callable[..., s.Reply | Encoded]) -> Callable[..., s.Reply | Encoded]:
        def handle() -> Response:
            if scope is None:
                reply = view(parse(request_model)) if request_model else view()
            else:
                auth.require(scope)  # a token without the verb is refused before parsing
                req = parse(request_model) if request_model else None
                auth.require(scope, getattr(req, "topic", None))
                reply = view(req) if request_model else view()
            if isinstance(reply, Encoded):
                body: str | bytes = reply.body
            else:
                body = reply.model_dump_json(exclude_none=True)
            return encoded_reply(body) if compress else Response(body, mimetype="application/json")

        bp.add_url_rule(path, view.__name__, handle, methods=[method], strict_slashes=False)
        ENDPOINTS.append(Endpoint(method, path, request_model, replies,
                                  (view.__doc__ or "").strip(), compress=compress, scope=scope))
        return view

    return decorate


def _read_body() -> dict[str, Any] | bytes | bytearray:
    """The form fields or the raw body, inflated from its Content-Encoding (wire.py)."""
    encoding = request.headers.get("Content-Encoding", "")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    multipart = request.mimetype == "multipart/form-data"
    if multipart and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedEncoding("a multipart body cannot be compressed; send JSON")
    if multipart:
        try:
            return request.form.to_dict()
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - gunicorn's parse errors share no base we may import
            raise BadRequest(f"the request body could not be read: {exc}"[:300]) from None
    return wire.read_body(request.stream, encoding, limit)


def _fields(raw: bytes | bytearray) -> dict[str, str]:
    """URL-encoded fields (a query string or a form body), the first value of each name. The
    text must be UTF-8: an invalid byte is a 400, as it is in a JSON body."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the parameters are not valid UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def _json_object(data: bytes | bytearray | str) -> dict[str, Any] | None:
    """`data` parsed as a JSON object, or None when it is not one."""
    if data.lstrip()[:1] not in (b"{", "{"):
        return None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _form_params(data: bytes | bytearray) -> dict[str, Any]:
    """A form body; or the JSON object sent as one (`curl -d '{...}'` labels its JSON a form):
    the whole body parses as an object, or the form's only name does."""
    found = _json_object(data)
    if found is not None:
        return found
    fields = _fields(data)
    if len(fields) == 1:
        (name, value), = fields.items()
        found = _json_object(name) if value == "" else None
        if found is not None:
            return found
    return fields


def _body_params() -> dict[str, Any]:
    data = _read_body()
    if isinstance(data, dict):
        return data
    if request.mimetype == FORM_TYPES[0]:
        return _form_params(data)
    if not data.strip():
        return {}
    try:
        body = _loads(data)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except ValueError:
        if request.is_json:
            raise BadRequest("the body is not valid JSON") from None
        try:  # a form body sent without its Content-Type
            return dict(parse_qsl(data.decode("utf-8"), strict_parsing=True))
        except ValueError:
            raise BadRequest("the body is neither JSON nor a form") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def _loads(data: bytes | bytearray) -> Any:
    """JSON with orjson (a batch of 1,000 log records parses 3-4 times faster than with
    json); what orjson refuses (a lone surrogate escape, NaN) is parsed by json, so both
    accept exactly what json accepts. orjson reads an integer past 64 bits as a float, and
    no field of the contract is one: a body holding a float is read again by json, which
    keeps the integer exact (then refused for its range, not its type)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
    return json.loads(data) if _holds_float(body) else body


def _holds_float(value: Any) -> bool:
    """A float among the values of `value`'s objects; lists are not looked into (the
    contract's lists hold strings: any number in one is refused for its type)."""
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    return isinstance(value, float)


def parse(model: type[Model]) -> Model:
    """Validate the merged parameters against `model`; any problem is a `bad_request`."""
    params: dict[str, Any] = _fields(request.query_string)
    params.update(_body_params())
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error["loc"]) or "body"
            problems.append(f"{where}: {error['msg']}")
        raise BadRequest("invalid request: " + "; ".join(problems)) from None


def encoded_reply(body: str | bytes) -> Response:
    """A JSON reply, compressed in the best coding the client accepts once it is large enough
    to gain from it."""
    raw = body.encode() if isinstance(body, str) else body
    coding = None
    if len(raw) >= wire.MIN_COMPRESSED_REPLY:
        coding = wire.reply_encoding(request.headers.get("Accept-Encoding", ""))
    response = Response(wire.compress(raw, coding) if coding else raw,
                        mimetype="application/json")
    response.vary.add("Accept-Encoding")
    if coding:
        response.headers["Content-Encoding"] = coding
    return response


def failure(status: int, code: str, message: str) -> Response:
    body = s.Failure(error=code, message=message).model_dump_json()
    return Response(body, status=status, mimetype="application/json")
