"""The JSON Schemas faultlab publishes for apps that talk to the lab, shipped in the package (read with
:mod:`importlib.resources`, so they work from a wheel) and served as ``GET /schema/<name>.json`` by the event
collector and the control API:

- ``events`` (``events.schema.json``): the body of ``POST /events``: one device event, or a batch of them
  (:mod:`faultlab.lab.collector` validates by hand, faster and with better messages; tests keep the two in
  agreement).
- ``push-stream`` (``push-stream.schema.json``): one line of a device's push stream (``GET
  /devices/<token>/pushes`` of the push gateway): a push, or a prompt.

Draft 2020-12. Checking an object against them (:func:`event_problems`) needs the ``jsonschema`` library, imported
only then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["MEDIA_TYPE", "SCHEMAS", "SchemaProblem", "event_problems", "load_schema", "schema_bytes", "validator"]

MEDIA_TYPE = "application/schema+json"
SCHEMAS = {"events": "events.schema.json", "push-stream": "push-stream.schema.json"}


@dataclass(frozen=True)
class SchemaProblem:
    """One way an object breaks a schema: the field it is about (None: the object as a whole) and why."""

    field: str | None
    message: str


@cache
def schema_bytes(name: str) -> bytes:
    """The schema file ``name`` (a key of :data:`SCHEMAS`) as shipped."""
    return resources.files(__package__).joinpath(SCHEMAS[name]).read_bytes()


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` as a fresh dict."""
    return json.loads(schema_bytes(name))


@cache
def validator(name: str, definition: str | None = None) -> Any:
    """A ``jsonschema`` Draft 2020-12 validator for schema ``name``, or for one of its ``$defs``."""
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    if definition is not None:  # the definition itself (none refers to another): a $ref less per object
        schema = {"$schema": schema["$schema"], **schema["$defs"][definition]}
    return Draft202012Validator(schema)


def event_problems(obj: Any) -> list[SchemaProblem]:
    """How one device event (not a batch) breaks ``events.schema.json``; empty when it follows it."""
    errors = sorted(validator("events", "event").iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
    return [SchemaProblem(_field_of(e), e.message) for e in errors]


def _field_of(error: Any) -> str | None:
    """The top-level field a ``jsonschema`` error is about (None: the event as a whole)."""
    if error.absolute_path:
        return str(error.absolute_path[0])
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in instance]
        return missing[0] if missing else None
    if error.validator == "additionalProperties":
        unknown = sorted(set(instance) - set(error.schema.get("properties", {})))
        return unknown[0] if unknown else None
    if error.validator == "anyOf":  # neither uuid nor call_id says which call
        return "uuid"
    return None
