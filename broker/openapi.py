"""/openapi.json, generated from the endpoint declarations in api.py and the models in schemas.py
(and token_schemas.py).

Nothing here is written by hand per endpoint: a new endpoint or field shows up on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

from .schemas import Failure

if TYPE_CHECKING:
    from .endpoints import Endpoint

REF = "#/components/schemas/{model}"
FAILURES = {"400": "Bad input, or a classic failure (topic_exists, unknown_topic, unknown_id, "
                   "not_registered, queue_empty, bad_request)",
            "401": "unauthorized: a token is configured and the request lacks it",
            "403": "forbidden: the token's scopes do not cover this verb on this topic",
            "409": "leased or lease_lost: a registration drained in leases, a lease gone",
            "413": "too_large: a message, body or batch over the limits",
            "503": "unavailable: the database did not answer"}


def document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    models = {Failure}
    for ep in endpoints:
        models.update(ep.replies)
        if ep.request is not None:
            models.add(ep.request)
    _, top = models_json_schema([(m, "validation") for m in sorted(models, key=_name)],
                                ref_template=REF)
    schemas = top.get("$defs", {})
    failure = {"description": "", "content": {"application/json": {"schema": _ref(Failure)}}}
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        operation: dict[str, Any] = {
            "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_')}",
            "summary": ep.summary,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {
                    "schema": _one_of(ep.replies)}}},
                **{code: {**failure, "description": text} for code, text in FAILURES.items()},
            },
        }
        if ep.request is not None:
            schema = ep.request.model_json_schema(by_alias=True, ref_template=REF)
            if ep.method == "GET":
                required = set(schema.get("required", []))
                operation["parameters"] = [
                    {"name": name, "in": "query", "required": name in required,
                     "schema": prop}
                    for name, prop in schema["properties"].items()]
            else:
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _ref(ep.request)}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "LogQueue broker", "version": version,
                 "description": "The classic queue API and its extensions. Parameters may also "
                                "be sent as a query string or a form body on every endpoint."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
    }


def _name(model: type) -> str:
    return model.__name__


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _one_of(models: tuple[type, ...]) -> dict[str, Any]:
    return _ref(models[0]) if len(models) == 1 else {"oneOf": [_ref(m) for m in models]}
