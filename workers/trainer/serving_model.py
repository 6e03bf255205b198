"""The MLflow serving model of a fine-tuned text classifier ("models from code").

MLflow copies this file into every registered model and executes it when the
model is loaded, so it must stand alone: it imports only os, json, numpy,
pandas, torch, transformers and mlflow, never learnloop. The model's one
artifact, ``model_dir``, is a Hugging Face folder written by
``save_pretrained`` (model and tokenizer) plus ``labels.json``:
``{"labels": [<original label values in class-id order>]}``, so a label that
was ``true`` or ``3`` on the wire comes back as ``True`` or ``3``, not ``"True"``.

``predict`` takes a DataFrame with a ``text`` column (the signature's one input, which
MLflow enforces: another column name is refused), also in columnar form
``{"text": [...]}``, and returns a DataFrame with ``label`` and ``probability`` (of that
label). Called directly (without MLflow's schema check) it also takes a list or a Series.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Set before the imports that read them: the model loads from its own files only.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlflow.models
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from transformers import AutoModelForSequenceClassification, AutoTokenizer

LABELS_FILE = "labels.json"
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 256


def read_labels(model_dir: str, num_labels: int, id2label: dict[int, str] | None) -> list[Any]:
    """The original label values in class-id order (``labels.json``; else the config's names)."""
    path = os.path.join(model_dir, LABELS_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            labels = list(json.load(f)["labels"])
    else:
        labels = [(id2label or {}).get(i, str(i)) for i in range(num_labels)]
    if len(labels) != num_labels:
        raise ValueError(f"{path}: {len(labels)} labels for a model with {num_labels} classes")
    return labels


def as_texts(model_input: Any) -> list[str]:
    """The texts of a DataFrame (``text`` column, or its only column), a Series, an array or a list."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            column = model_input["text"]
        elif len(model_input.columns) == 1:
            column = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
        values: list[Any] = column.tolist()
    elif isinstance(model_input, pd.Series | np.ndarray):
        values = list(model_input.ravel()) if isinstance(model_input, np.ndarray) else model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, list | tuple):
        values = list(model_input)
    else:
        raise TypeError(f"expected a DataFrame with a 'text' column or a list of strings, not {type(model_input)}")
    if len(values) == 1 and isinstance(values[0], list | tuple | np.ndarray):
        # Columnar input, {"text": [...]} (``{"inputs": {"text": [...]}}`` when served), arrives as one row
        # holding the whole column.
        values = list(values[0])
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        raise TypeError(f"every text must be a string, got {type(bad).__name__}: {bad!r}")
    return values


class TextClassifierModel(PythonModel):
    """Batched inference of a sequence classifier; returns the top label and its probability."""

    def load_context(self, context: PythonModelContext) -> None:
        model_dir = context.artifacts["model_dir"]
        config = dict(context.model_config or {})
        self.batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        self.max_length = int(config.get("max_length", DEFAULT_MAX_LENGTH))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        self.model.eval()
        self.labels = read_labels(model_dir, int(self.model.config.num_labels), self.model.config.id2label)

    # The pandas hint keeps MLflow from inferring a schema from it (the logged signature is the contract).
    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        texts = as_texts(model_input)
        batch_size = int((params or {}).get("batch_size", self.batch_size))
        labels: list[Any] = []
        probabilities: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                encoded = self.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                probs = torch.softmax(self.model(**encoded).logits.float(), dim=-1)
                best, index = probs.max(dim=-1)
                labels.extend(self.labels[i] for i in index.tolist())
                probabilities.extend(best.tolist())
        return pd.DataFrame({"label": pd.Series(labels, dtype=object), "probability": probabilities})


mlflow.models.set_model(TextClassifierModel())
