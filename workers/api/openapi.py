"""The OpenAPI document: FastAPI's, plus the event and input schemas the POST routes take.

The ingest and predict routes read their bodies themselves (size cap first, then
the schemas), so FastAPI cannot derive the request bodies; we put the events'
JSON Schemas (the same ones ``learnloop schemas export`` writes) under
``components/schemas``, with ``source`` optional since the gateway fills it in,
and the predict route's ``PredictInput`` beside them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from workers.api.ingest import INGEST_ROUTES
from workers.api.model_inputs import TextsBody
from workers.api.predict import PredictInput

SOURCE_NOTE = "The producing application; the gateway uses the API key's name when it is absent."


def event_components() -> dict[str, Any]:
    """The JSON Schemas of the ingestible events and their parts, keyed by component name."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in INGEST_ROUTES.values()]
    models.append((PredictInput, "validation"))
    models.append((TextsBody, "validation"))
    _, top = models_json_schema(models, by_alias=True, ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = top["$defs"]
    for model in INGEST_ROUTES.values():
        schema = components[model.__name__]
        schema["required"] = [name for name in schema.get("required", []) if name != "source"]
        schema["properties"]["source"]["description"] = SOURCE_NOTE
    return components


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (served at ``/openapi.json``) include the event schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in event_components().items():
                schemas.setdefault(name, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
