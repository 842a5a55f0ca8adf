"""Generate the InferenceService CRD (apiextensions.k8s.io/v1) from the pydantic models.

The schema is walked from the models' fields, not from pydantic's JSON Schema: a
structural schema needs every type spelled out (no $ref, no nullable unions), int-or-string for
quantities, and the CEL rules the models carry in `x-kubernetes-validations`.

Defaults of objects are written out in full, nested defaults included. The API server checks each
`default` literal against its node's schema and CEL rules when the CRD is created, as written and
with no nested defaulting: `default: {}` under a rule that reads `self.minReplicas` is refused
("no such key: minReplicas"). Objects sent later are defaulted recursively before validation, so
full literals and per-field defaults give the same result.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import models as m

# Fields whose values are free-form Kubernetes objects, passed through unvalidated.
_FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_quantity(field: FieldInfo) -> bool:
    """Quantity fields carry a marker, on the field itself or inside Optional[Quantity]."""
    markers = [field.json_schema_extra]
    annotation = _unwrap_optional(field.annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        markers += [meta.json_schema_extra for meta in typing.get_args(annotation)[1:] if isinstance(meta, FieldInfo)]
    return any(isinstance(extra, dict) and extra.get("quantity") for extra in markers)


def _enum_schema(values: list[str]) -> dict[str, Any]:
    # maxLength bounds the API server's CEL cost estimate of rules that read the field.
    return {"type": "string", "enum": list(values), "maxLength": max(len(v) for v in values)}


# Schema keywords a field may carry in json_schema_extra, copied to the CRD as they are.
_PASSED_THROUGH = ("format", "x-kubernetes-list-type", "x-kubernetes-list-map-keys")


def _type_schema(tp: Any) -> dict[str, Any]:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(tp)
        schema = _type_schema(base)
        for meta in metadata:  # constraints of a map's values, e.g. dict[str, LabelValue]
            if isinstance(meta, FieldInfo):
                _constraints(meta, schema)
        return schema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_schema(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([e.value for e in tp])
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(item)}
    if origin is dict:
        _, value = typing.get_args(tp)
        if value is Any:
            return dict(_FREE_FORM)
        return {"type": "object", "additionalProperties": _type_schema(value)}
    if origin in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {int, str}:
        return {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    raise TypeError(f"no CRD schema for type {tp!r}")


def _constraints(field: FieldInfo, schema: dict[str, Any]) -> None:
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            schema["minimum"] = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            schema["minimum"] = meta.gt
            schema["exclusiveMinimum"] = True
        elif isinstance(meta, annotated_types.Le):
            schema["maximum"] = meta.le
        elif isinstance(meta, annotated_types.Lt):
            schema["maximum"] = meta.lt
            schema["exclusiveMaximum"] = True
        elif isinstance(meta, annotated_types.MinLen):
            schema["minItems" if schema.get("type") == "array" else "minLength"] = meta.min_length
        elif isinstance(meta, annotated_types.MaxLen):
            schema["maxItems" if schema.get("type") == "array" else "maxLength"] = meta.max_length
        elif hasattr(meta, "pattern") and meta.pattern is not None:
            schema["pattern"] = meta.pattern
    extra = field.json_schema_extra
    if isinstance(extra, dict):
        if "enum" in extra:
            schema.update(_enum_schema(extra["enum"]))
        schema.update({key: extra[key] for key in _PASSED_THROUGH if key in extra})
        if "x-kubernetes-validations" in extra:  # a rule of this field alone
            schema["x-kubernetes-validations"] = list(extra["x-kubernetes-validations"])


def _default(field: FieldInfo) -> tuple[bool, Any]:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return False, None
    if value is None:
        return False, None
    if isinstance(value, BaseModel):
        # In full, nested defaults included: the API server validates the literal as written.
        return True, _without_empty(value.model_dump(by_alias=True, mode="json", exclude_none=True))
    if isinstance(value, enum.Enum):
        return True, value.value
    if isinstance(value, (list, dict)) and not value:
        return False, None  # empty collections are the absence of a value
    return True, value


def _without_empty(value: Any) -> Any:
    """Empty collections are the absence of a value (the API server leaves them absent)."""
    if isinstance(value, dict):
        pruned = {key: _without_empty(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item not in ({}, [])}
    return value


def field_schema(field: FieldInfo, annotation: Any) -> dict[str, Any]:
    if _is_quantity(field):
        schema = _type_schema(int | str)
        schema["pattern"] = m.QUANTITY_PATTERN
    else:
        schema = _type_schema(annotation)
        _constraints(field, schema)
    if field.description:
        schema = {"description": field.description, **schema}
    has_default, default = _default(field)
    if has_default:
        schema["default"] = default
    return schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        properties[wire] = field_schema(field, field.annotation)
        if field.is_required():
            required.append(wire)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    extra = model.model_config.get("json_schema_extra")
    if isinstance(extra, dict) and "x-kubernetes-validations" in extra:
        schema["x-kubernetes-validations"] = extra["x-kubernetes-validations"]
    return schema


def openapi_schema() -> dict[str, Any]:
    """The version's openAPIV3Schema: the whole object as the API server validates it."""
    return {
        "type": "object",
        "description": "An LLM inference service on GPUs, sized by throughput.",
        "required": ["spec"],
        "x-kubernetes-validations": m.NAME_RULES,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Only name and generateName may be constrained here. The API server already limits them to
            # 253 characters; saying so bounds the CEL cost estimate of the name rules above.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 253},
                    "generateName": {"type": "string", "maxLength": 253},
                },
            },
            "spec": {"description": "The desired service.", **model_schema(m.InferenceServiceSpec)},
            "status": {"description": "Observed state, written by the operator.", **model_schema(m.InferenceServiceStatus)},
        },
    }


PRINTER_COLUMNS = [
    {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.type"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source", "priority": 0},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
     "description": "Ready replicas."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "Tokens/s", "type": "number", "jsonPath": ".status.signals.tokensPerSecond"},
    {"name": "Queue", "type": "number", "jsonPath": ".status.signals.queueDepth"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{m.PLURAL}.{m.GROUP}",
            "labels": {"app.kubernetes.io/name": "tokenscale", "app.kubernetes.io/part-of": "tokenscale"},
        },
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": list(m.SHORT_NAMES),
                "categories": list(m.CATEGORIES),
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `tokenscale crd` from tokenscale.api.models. Do not edit: run `make crds`.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)
