"""Check a CRD and its custom resources the way kube-apiserver does, without an API server.

Two moments of the API server are stood in for:

- Creating the CRD (`creation_errors`): the schema must be structural (every node typed, no $ref,
  metadata constrained in name and generateName only, list types consistent), every CEL rule must
  compile, and every `default` literal must be valid against its own node as written: pruned
  (no unknown fields), valid against the node's schema, and valid against every
  `x-kubernetes-validations` rule of the node and of the nodes under it, with NO defaulting of
  the literal first. This is the check that refused `default: {}` on spec.autoscaling with
  "no such key: minReplicas evaluating rule ...". The API server also estimates each rule's cost
  from the maxLength / maxItems of what it reads and refuses rules over budget; this cannot be
  emulated exactly, so strings and lists that rules read must carry a bound.
- Creating a custom resource (`validate`): structural defaulting (`apply_defaults`, recursive,
  an object's missing properties before its children), then the OpenAPI schema with strict field
  validation (unknown fields are errors, as `kubectl apply` reports them) and formats, list-map
  key uniqueness, the object's name as a DNS subdomain, then the CEL rules with `self` bound to each
  node. Every problem is reported, each naming the field it concerns.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy
from openapi_schema_validator import OAS30Validator, oas30_format_checker

_SCALARS = ("string", "integer", "number", "boolean")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _strict(schema: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
    """Copy of a structural schema with unknown fields forbidden and k8s extensions dropped."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
            if root and "metadata" in value:  # ObjectMeta is validated as such, never pruned
                out[key]["metadata"] = {k: v for k, v in value["metadata"].items() if not k.startswith("x-")}
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
    """Structural defaulting as the API server does it: first every missing (or null, when not
    nullable) property of an object that has a default gets a copy of it, then each child is
    defaulted, through properties, additionalProperties and items alike."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if "default" in sub and (name not in value or (value[name] is None and not sub.get("nullable"))):
                value[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name in list(value):
            sub = schema.get("properties", {}).get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
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
            errors.append(f"{_path(path)}: {error} evaluating rule: {rule.get('message', rule['rule'])}")
            continue
        if isinstance(ok, Exception) or not isinstance(ok, celpy.celtypes.BoolType):
            errors.append(f"{_path(path)}: {ok} evaluating rule: {rule.get('message', rule['rule'])}")
        elif not bool(ok):
            errors.append(f"{_path(path)}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _cel_errors(value[name], sub, [*path, name], env)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], [*path, index], env)
    return errors


def _schema_errors(value: Any, schema: dict[str, Any], *, root: bool, prefix: list[Any]) -> list[str]:
    validator = OAS30Validator(_strict(schema, root=root), format_checker=oas30_format_checker)
    return [f"{_path([*prefix, *error.absolute_path])}: {error.message}"
            for error in sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])]


def _list_errors(value: Any, schema: dict[str, Any], path: list[Any]) -> list[str]:
    """Duplicate keys in list-type map / set lists, which the API server refuses ("Duplicate value")."""
    errors: list[str] = []
    if isinstance(value, list):
        kind, keys = schema.get("x-kubernetes-list-type"), schema.get("x-kubernetes-list-map-keys", [])
        seen: list[Any] = []
        for index, item in enumerate(value):
            key = [item.get(k) for k in keys] if kind == "map" and isinstance(item, dict) else item
            if kind in ("map", "set") and key in seen:
                errors.append(f"{_path([*path, index])}: Duplicate value: {key}")
            seen.append(key)
            if isinstance(schema.get("items"), dict):
                errors += _list_errors(item, schema["items"], [*path, index])
    elif isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _list_errors(value[name], sub, [*path, name])
    return errors


def version_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if version in (None, v["name"]))
    return chosen["schema"]["openAPIV3Schema"]


def validate(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """All problems of `obj` under `crd`, as 'field.path: message' lines; [] when valid."""
    schema = version_schema(crd)
    obj = apply_defaults(copy.deepcopy(obj), schema)
    errors = _schema_errors(obj, schema, root=True, prefix=[])
    name = (obj.get("metadata") or {}).get("name")
    if isinstance(name, str) and not (len(name) <= 253 and _DNS_SUBDOMAIN.match(name)):
        errors.append("metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                      "characters, '-' or '.', and must start and end with an alphanumeric character")
    errors += _list_errors(obj, schema, [])
    if errors:  # CEL runs on schema-valid objects only here (the API server skips it on type errors)
        return errors
    return _cel_errors(obj, schema, [], celpy.Environment())


# --- the CRD itself, as checked when it is created ------------------------------------------------


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a schema with its path (properties, items `[]`, additionalProperties `{}`)."""
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def _structural_errors(schema: dict[str, Any]) -> list[str]:
    errors = []
    metadata = schema.get("properties", {}).get("metadata")
    if metadata is not None:
        for name, sub in metadata.get("properties", {}).items():
            if name not in ("name", "generateName") or sub.get("type") != "string":
                errors.append(f"metadata.{name}: only name and generateName (strings) may be specified")
    for path, node in walk(schema):
        if "$ref" in node:
            errors.append(f"{path}: $ref is not allowed")
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            errors.append(f"{path}.type: Required value: must not be empty for specified object fields")
        if node.get("nullable") and "type" not in node:
            errors.append(f"{path}: nullable needs a type")
        if "properties" in node and "additionalProperties" in node:
            errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            errors.append(f"{path}.items: Required value: must be specified")
        kind = node.get("x-kubernetes-list-type")
        if kind is not None and node.get("type") != "array":
            errors.append(f"{path}: x-kubernetes-list-type is only allowed on arrays")
        items = node.get("items") if isinstance(node.get("items"), dict) else {}
        if kind == "set" and items.get("type") not in _SCALARS:
            errors.append(f"{path}: x-kubernetes-list-type set needs scalar items")
        if "x-kubernetes-list-map-keys" in node and kind != "map":
            errors.append(f"{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type map")
        if kind == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            if items.get("type") != "object" or not keys:
                errors.append(f"{path}: x-kubernetes-list-type map needs object items and list-map-keys")
            for key in keys:
                prop = items.get("properties", {}).get(key)
                if prop is None or prop.get("type") not in _SCALARS:
                    errors.append(f"{path}: list-map key {key} must be a scalar property of the items")
                elif key not in items.get("required", []) and "default" not in prop:
                    errors.append(f"{path}: list-map key {key} must be required or have a default")
    return errors


_SELF_PATH = re.compile(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _rule_errors(schema: dict[str, Any], env: celpy.Environment) -> list[str]:
    """Each rule compiles, and every string or list it reads is bounded (the cost estimate)."""
    errors = []
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if not rule.get("message"):
                errors.append(f"{path}: rule {rule['rule']!r} has no message")
            try:
                env.compile(rule["rule"])
            except Exception as error:
                errors.append(f"{path}: rule {rule['rule']!r} does not compile: {error}")
            for chain in sorted(set(_SELF_PATH.findall(rule["rule"]))):
                target = node
                for name in chain.strip(".").split("."):
                    if name not in target.get("properties", {}):
                        break
                    target = target["properties"][name]
                if target.get("type") == "string" and "maxLength" not in target:
                    errors.append(f"{path}: rule {rule['rule']!r} reads self{chain}, a string with no maxLength")
                if target.get("type") == "array" and "maxItems" not in target:
                    errors.append(f"{path}: rule {rule['rule']!r} reads self{chain}, a list with no maxItems")
    return errors


def default_errors(schema: dict[str, Any]) -> list[str]:
    """Each `default` literal against its own node, as written (no nested defaulting): schema with
    unknown fields refused (the pruning check), then the CEL rules of the node and all below it."""
    errors = []
    env = celpy.Environment()
    for path, node in walk(schema):
        if "default" not in node:
            continue
        literal = node["default"]
        prefix = [f"{path}.default"]
        found = _schema_errors(literal, node, root=False, prefix=prefix)
        errors += found or _cel_errors(literal, node, prefix, env)
    return errors


def creation_errors(crd: dict[str, Any]) -> list[str]:
    """What kube-apiserver refuses when the CRD is created, as far as it can be checked offline."""
    errors = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        errors += _structural_errors(schema) + _rule_errors(schema, celpy.Environment()) + default_errors(schema)
        columns = version.get("additionalPrinterColumns", [])
        names = [column["name"] for column in columns]
        errors += [f"additionalPrinterColumns: Duplicate value: {n}" for n in sorted(set(names)) if names.count(n) > 1]
        errors += [f"additionalPrinterColumns[{c['name']}].type: Unsupported value: {c['type']}" for c in columns
                   if c["type"] not in ("integer", "number", "string", "boolean", "date")]
        errors += [f"additionalPrinterColumns[{c['name']}].jsonPath: must start with '.'" for c in columns
                   if not c["jsonPath"].startswith(".")]
    return errors
