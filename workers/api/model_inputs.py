"""The bodies ``POST /v1/models/{name}/predict`` takes: texts, or what MLflow's scoring server takes.

- ``{"texts": ["...", ...], "subject_ids": ["u1", null, ...]}`` (``subject_ids`` optional);
- ``{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}}``;
- ``{"dataframe_records": [{"text": "..."}, ...]}``;
- ``{"inputs": {"text": ["..."]}}`` or ``{"inputs": ["...", ...]}``;
- ``{"instances": [{"text": "..."}, ...]}`` or ``{"instances": ["...", ...]}``.

The DataFrame-like forms take the texts from a ``text`` column and the subjects from an
optional ``subject_id`` column; any other column is refused (422), as a registered model's
input schema refuses it, so a misspelt column never predicts on the wrong data.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import MAX_NAME, MAX_TEXT
from workers.api.ingest import Rejection

FORMATS = ("texts", "dataframe_split", "dataframe_records", "inputs", "instances")
COLUMNS = ("text", "subject_id")


class TextsBody(BaseModel):
    """The plain form (the others are MLflow's scoring-server forms, see the route's description)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="the texts to classify")
    subject_ids: list[str | None] | None = Field(
        default=None, description="who each prediction is for: one per text, keeps a subject on one version"
    )


def decode_model_inputs(doc: Any, *, max_batch: int) -> tuple[list[str], list[str | None]]:
    """The texts and subject ids of a body; ``Rejection`` (422/413) naming what is wrong.

    >>> decode_model_inputs({"instances": [{"text": "hi", "subject_id": "u1"}, {"text": "yo"}]}, max_batch=10)
    (['hi', 'yo'], ['u1', None])
    >>> decode_model_inputs({"dataframe_split": {"columns": ["text"], "data": [["hi"]]}}, max_batch=10)
    (['hi'], [None])
    >>> try:
    ...     decode_model_inputs({"inputs": {"txt": ["hi"]}}, max_batch=10)
    ... except Rejection as r:
    ...     print(r.status_code, r.detail)
    422 unknown column 'txt': the model takes a 'text' column (and an optional 'subject_id')
    """
    if not isinstance(doc, dict) or len(set(doc) & set(FORMATS)) != 1:
        raise _invalid(f"the body must be an object with exactly one of {', '.join(FORMATS)}")
    (form,) = set(doc) & set(FORMATS)
    extra = set(doc) - {form, "subject_ids", "params"}
    if extra or ("subject_ids" in doc and form != "texts"):
        raise _invalid(f"unexpected keys beside {form!r}: {sorted(extra or {'subject_ids'})}")
    value = doc[form]
    if form == "texts":
        texts, subjects = _strings(value, form), doc.get("subject_ids")
        if subjects is not None and (not isinstance(subjects, list) or len(subjects) != len(texts)):
            raise _invalid(f"subject_ids must be a list with one entry per text ({len(texts)})")
        columns = {"text": texts, "subject_id": subjects if subjects is not None else [None] * len(texts)}
    elif form == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list) or not isinstance(
                value.get("data"), list):  # fmt: skip
            raise _invalid("dataframe_split needs 'columns' (a list of names) and 'data' (a list of rows)")
        names = value["columns"]
        _check_columns(names)
        if any(not isinstance(row, list) or len(row) != len(names) for row in value["data"]):
            raise _invalid(f"every dataframe_split row needs {len(names)} values (columns {names})")
        columns = {name: [row[i] for row in value["data"]] for i, name in enumerate(names)}
    elif isinstance(value, dict):  # inputs in columnar form: {"text": [...], "subject_id": [...]}
        _check_columns(list(value))
        columns = {name: v if isinstance(v, list) else [v] for name, v in value.items()}
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):  # a plain list of texts
        columns = {"text": value}
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):  # records
        names = sorted({name for record in value for name in record})
        _check_columns(names)
        columns = {name: [record.get(name) for record in value] for name in names}
    else:
        raise _invalid(f"{form} must be a list of texts, a list of records or an object of columns")
    if "text" not in columns:
        raise _invalid("the input has no 'text' column")
    texts = _strings(columns["text"], "text")
    subjects = columns.get("subject_id") or [None] * len(texts)
    if len(subjects) != len(texts):
        raise _invalid("the 'subject_id' column is not as long as the 'text' column")
    if len(texts) > max_batch:
        raise Rejection.whole(413, "batch_too_large", f"a request holds at most {max_batch} inputs, got {len(texts)}")
    for s in subjects:
        if s is not None and (not isinstance(s, str) or not 1 <= len(s) <= MAX_NAME):
            raise _invalid(f"a subject id is a string of 1 to {MAX_NAME} characters, got {s!r}")
    return texts, list(subjects)


def _check_columns(names: list[Any]) -> None:
    for name in names:
        if name not in COLUMNS:
            raise _invalid(f"unknown column {name!r}: the model takes a 'text' column (and an optional 'subject_id')")


def _strings(values: Any, what: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise _invalid(f"{what} must be a non-empty list of texts")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise _invalid(f"every {what} must be a non-empty string, got {v!r}")
        if len(v) > MAX_TEXT:
            raise _invalid(f"a text holds at most {MAX_TEXT} characters, got {len(v)}")
    return values


def _invalid(detail: str) -> Rejection:
    return Rejection.whole(422, "validation", detail)
