"""JSON Schema (draft 2020-12) files of the events, for producers that are not written in Python."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from schemas.codec import EVENT_MODELS
from schemas.envelope import Envelope

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = "https://learnloop.dev/schemas/"


def schema_file_name(schema_id: str) -> str:
    """``"feedback/1"`` -> ``"feedback.v1.schema.json"``.

    >>> schema_file_name("model-update/1")
    'model-update.v1.schema.json'
    """
    name, _, major = schema_id.partition("/")
    return f"{name}.v{major}.schema.json"


def event_json_schema(model: type[Envelope]) -> dict[str, Any]:
    """The JSON Schema of one event, with wire names (``schema``, not ``schema_``).

    >>> from schemas import FeedbackEvent
    >>> doc = event_json_schema(FeedbackEvent)
    >>> doc["$id"], doc["properties"]["schema"]["const"], "schema" in doc["required"]
    ('https://learnloop.dev/schemas/feedback/1', 'feedback/1', True)
    """
    # `schema`, `event_id` and `occurred_at` come out required: the validator every reader uses requires them.
    body = model.model_json_schema(by_alias=True, mode="validation")
    description = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0]  # the doctest stays in Python
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URI + model.SCHEMA_ID,
        **body,
        "title": model.__name__,
        "description": description,
    }


def export_json_schemas(directory: str | Path) -> list[Path]:
    """Write one ``<type>.v<major>.schema.json`` per event into ``directory``; return the paths, sorted."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for schema_id, model in EVENT_MODELS.items():
        path = target / schema_file_name(schema_id)
        path.write_text(json.dumps(event_json_schema(model), indent=2, ensure_ascii=False) + "\n", "utf-8")
        paths.append(path)
    return sorted(paths)
