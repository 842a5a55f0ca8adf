"""The InferenceService API: models, validation, and the generated CRD (pure)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    VERSION,
    AutoscalingMode,
    AutoscalingSpec,
    Condition,
    DecisionRecord,
    EngineSpec,
    EngineType,
    InferenceService,
    InferenceServiceSpec,
    InferenceServiceStatus,
    MetricsUnavailableAction,
    ModelSpec,
    ResourcesSpec,
    ScaleDownRules,
    ScaleUpRules,
    ScalingRules,
    SignalsStatus,
    name_problems,
)


class SpecError(ValueError):
    """An InferenceService spec the models reject; `str()` is the message for a condition."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _location(loc: tuple[Any, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem, each naming the field by its wire path (spec.autoscaling.minReplicas)."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{_location(item['loc'])}: {message}")
    return problems


def parse_spec(spec: Any, *, name: str | None = None) -> InferenceServiceSpec:
    """Validate a spec as read from the API; raises only SpecError. With `name`, also the object's
    name: it must be able to name the children (the CRD's rule, again, for a cluster whose CRD is older)."""
    problems = name_problems(name) if name is not None else []
    if not isinstance(spec, dict):
        raise SpecError([f"spec: must be an object, got {type(spec).__name__}", *problems])
    try:
        # Strict JSON semantics, as the API server has them: "yes" is no boolean, "3" no integer.
        parsed = InferenceServiceSpec.model_validate_json(json.dumps(spec), strict=True)
    except ValidationError as error:
        raise SpecError(format_validation_error(error) + problems) from None
    if problems:
        raise SpecError(problems)
    return parsed


def parse_status(status: Any) -> InferenceServiceStatus:
    """Read back the status the operator wrote; anything unreadable reads as empty, never raises."""
    if not isinstance(status, dict):
        return InferenceServiceStatus()
    try:
        return InferenceServiceStatus.model_validate(status)
    except ValidationError:
        return InferenceServiceStatus()


__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "VERSION",
    "AutoscalingMode",
    "AutoscalingSpec",
    "Condition",
    "DecisionRecord",
    "EngineSpec",
    "EngineType",
    "InferenceService",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "MetricsUnavailableAction",
    "ModelSpec",
    "ResourcesSpec",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingRules",
    "SignalsStatus",
    "SpecError",
    "format_validation_error",
    "name_problems",
    "parse_spec",
    "parse_status",
]
