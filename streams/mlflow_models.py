"""Loading MLflow pyfunc models for serving apps, fed a list of texts as their ``text`` column.

A registered text model's signature takes one named string column (``text``), which is what
``mlflow models serve`` and a plain ``pyfunc.load_model`` enforce. Serving apps most often
hold a list of strings; :class:`ColumnInput` turns a list (or a Series) into that one
column, and passes a DataFrame through untouched, so its column names are still checked.
"""

from __future__ import annotations

import os
import warnings
from typing import Any


class ColumnInput:
    """A pyfunc model whose signature has exactly one input column, also fed a plain list of values."""

    def __init__(self, model: Any) -> None:
        self.model = model
        schema = model.metadata.get_input_schema() if getattr(model, "metadata", None) is not None else None
        names = schema.input_names() if schema is not None and schema.has_input_names() else []
        self.column: str | None = names[0] if len(names) == 1 else None

    @property
    def metadata(self) -> Any:
        return self.model.metadata

    def predict(self, inputs: Any, params: dict[str, Any] | None = None) -> Any:
        if self.column is not None and (isinstance(inputs, list | tuple) or _is_series(inputs)):
            import pandas as pd

            inputs = pd.DataFrame({self.column: list(inputs)})
        return self.model.predict(inputs, params=params)


def _is_series(value: Any) -> bool:
    return type(value).__name__ == "Series" and hasattr(value, "to_frame")


def load_mlflow_model(uri: str) -> Any:
    """The default loader: ``mlflow.pyfunc.load_model`` (MLflow finds its registry in ``MLFLOW_TRACKING_URI``)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with warnings.catch_warnings():
        # Both fire once, on import: mlflow.pyfunc warns about `Any` fields of its own agent types, and
        # MLflow's SQL store uses a relationship option that SQLAlchemy 2.1 deprecates.
        warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning)
        warnings.filterwarnings(
            "ignore", message="The ``noload`` loader strategy is deprecated", category=DeprecationWarning
        )
        import mlflow.pyfunc

        return ColumnInput(mlflow.pyfunc.load_model(uri))
