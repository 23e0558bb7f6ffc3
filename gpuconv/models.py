"""Keras's ``models`` namespace: ``Sequential``, ``load_model``, ``model_from_json``."""
import json

from gpuconv.nn.model import Sequential
from gpuconv.nn.saving import load_model


def model_from_json(text):
    """The (unbuilt, uncompiled) model that ``Sequential.to_json()`` described."""
    try:
        document = json.loads(text)
        if document.get("class_name") != "Sequential":
            raise ValueError(f"class_name must be 'Sequential', got {document.get('class_name')!r}")
        return Sequential.from_config(document["config"])
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"not a gpuconv model description: {error!r}") from None


__all__ = ["Sequential", "load_model", "model_from_json"]
