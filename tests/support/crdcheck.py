"""Validate a custom resource against a CRD the way the API server does, without an API server.

Order as in kube-apiserver: structural defaulting, then the OpenAPI schema (with strict field
validation: unknown fields are errors, as `kubectl apply` reports them), then the CEL rules
(`x-kubernetes-validations`) evaluated with `self` bound to each node. Every problem is reported,
each naming the field it concerns.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
from openapi_schema_validator import OAS30Validator


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of a structural schema with unknown fields forbidden and k8s extensions dropped."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _strict(value)
        elif key == "anyOf":
            out[key] = [_strict(sub) for sub in value]
        else:
            out[key] = value
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: fill absent properties that have a default, then recurse."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _cel_errors(value: Any, schema: dict[str, Any], path: list[Any], env: celpy.Environment) -> list[str]:
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            ok = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as error:  # a rule that cannot evaluate is an error, like in the API server
            errors.append(f"{_path(path)}: rule {rule['rule']!r} failed to evaluate: {error}")
            continue
        if not bool(ok):
            errors.append(f"{_path(path)}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _cel_errors(value[name], sub, [*path, name], env)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], [*path, index], env)
    return errors


def version_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if version in (None, v["name"]))
    return chosen["schema"]["openAPIV3Schema"]


def validate(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """All problems of `obj` under `crd`, as 'field.path: message' lines; [] when valid."""
    schema = version_schema(crd)
    obj = apply_defaults(copy.deepcopy(obj), schema)
    validator = OAS30Validator(_strict(schema))
    errors = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        errors.append(f"{_path(list(error.absolute_path))}: {error.message}")
    if errors:  # CEL runs on schema-valid objects only, as in the API server
        return errors
    return _cel_errors(obj, schema, [], celpy.Environment())
