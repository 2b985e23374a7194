"""A small JSON Schema check for action inputs: the subset plugins use.

Supports ``type`` (one or a list), ``properties``, ``required``,
``additionalProperties: false``, ``enum``, ``minLength``/``maxLength``,
``minimum``/``maximum`` and ``items``. The message names the field, never the value.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: Dict[str, Any], path: str = "input") -> Optional[str]:
    """The first problem of ``value`` against ``schema``, or ``None``."""
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES[k](value) for k in kinds):
            return f"`{path}` must be {' or '.join(kinds)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"`{path}` must be one of {', '.join(map(str, schema['enum']))}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"`{path}` is shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"`{path}` is longer than {schema['maxLength']} characters"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"`{path}` is below {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"`{path}` is above {schema['maximum']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                return f"`{path}.{name}` is required"
        for name, item in value.items():
            if name in props:
                problem = validate(item, props[name], f"{path}.{name}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"`{path}` has unknown field `{name}`"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problem = validate(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    return None
