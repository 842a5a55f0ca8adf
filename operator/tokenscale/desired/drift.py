"""Is a live object still what we asked for? (pure)

The API server adds defaults (imagePullPolicy, terminationMessagePath, protocol, ...) and
rewrites quantities in canonical form ("0.5" -> "500m"), so "equal" means: every field we set
is present with the same value; fields we did not set are the server's business. Lists must
have the same length (an extra container or env var someone added is drift). An absent field
equals an empty one ({}, [], null) and, inside an object's spec or metadata, its zero value ("",
false, 0): the API server drops those when it stores a built-in object (Go's omitempty). A status
patch compared with the stored status (a custom resource's, kept verbatim) has no such zeros.

Some fields of the pod template are ours even when the spec no longer asks for them, so that
removing e.g. spec.pod.serviceAccountName also removes it from the Deployment: the pod spec
fields in OWNED_POD_FIELDS, every pod template label, and the pod annotations we recorded as
ours (MANAGED_ANNOTATIONS). Another tool's template annotation (`kubectl rollout restart`'s
restartedAt) is left alone.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from tokenscale.api.models import MANAGED_ANNOTATIONS  # the pod annotation recording spec.pod.annotations

_EXACT_DIGITS = 100  # enough for any quantity the API server accepts (|value| < 2^63, 9 decimals)
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkKMGTPE]i?|)$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


# Not kubernetes.utils.parse_quantity: importing it loads the whole kubernetes client (its
# package __init__ imports the API client and config), and desired/ is pure by contract
# (pyproject's import-linter). It is also laxer than the API server ("1K", "1 Gi").
def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation:
        return None
    # Exact arithmetic: the default 28 digits would round a long quantity, and a rounded value
    # would differ from the one the API server stores (the drift check would never settle).
    with localcontext(prec=_EXACT_DIGITS):
        if suffix in _SUFFIX:  # before the exponent: "E" and "Ei" are suffixes (exa, exbi)
            return base * _SUFFIX[suffix]
        if suffix[:1] in ("e", "E"):
            return base * Decimal(10) ** int(suffix[1:])
    return None


# Optional pod spec fields only the InferenceService sets: present live but not desired is drift.
OWNED_POD_FIELDS = frozenset({
    "affinity", "nodeSelector", "tolerations", "priorityClassName", "runtimeClassName", "imagePullSecrets",
    "serviceAccountName", "serviceAccount", "topologySpreadConstraints",
})
_QUANTITY_KEYS = ("resources", "sizeLimit", "limits", "requests", "divisor")


def pod_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """The user's pod annotations plus the record of their keys, so a removed one can be removed."""
    return {**annotations, MANAGED_ANNOTATIONS: ",".join(sorted(annotations))}


def _is_zero(value: Any) -> bool:
    return value is None or value is False or value in ("", {}, []) or (
        type(value) in (int, float) and value == 0)


def _implied(path: str, desired: dict[str, Any]) -> dict[str, Any]:
    """`desired` with the owned maps it leaves out made explicit (as empty)."""
    if path.endswith(".template.metadata"):
        return {"labels": {}, "annotations": {}, **desired}
    return desired


def _stale(path: str, desired: dict[str, Any], live: dict[str, Any]) -> set[str]:
    """Keys of a live map that are ours and that the desired state no longer has."""
    if path.endswith(".template.metadata.labels"):
        ours = set(live)
    elif path.endswith(".template.metadata.annotations"):
        recorded = live.get(MANAGED_ANNOTATIONS)
        ours = {MANAGED_ANNOTATIONS, *(recorded.split(",") if isinstance(recorded, str) and recorded else ())}
    elif path.endswith(".template.spec"):
        ours = set(OWNED_POD_FIELDS)
        if "serviceAccountName" in desired:
            ours.discard("serviceAccount")  # the server mirrors serviceAccountName into it
        # (when not desired, it goes too: else the server would read the old name back from it)
    else:
        return set()
    return {key for key in ours & set(live) if key not in desired and not _is_zero(live[key])}


def _leaf_equal(desired: Any, actual: Any, quantity: bool) -> bool:
    if desired == actual:
        return True
    if quantity:
        a, b = parse_quantity(desired), parse_quantity(actual)
        return a is not None and a == b
    return False


def differences(desired: Any, actual: Any, path: str = "", quantity: bool = False) -> list[str]:
    """Paths where `actual` departs from `desired` (empty: no drift)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        desired = _implied(path, desired)
        found: list[str] = []
        for key, value in desired.items():
            inner_quantity = quantity or key in _QUANTITY_KEYS
            if key not in actual:
                if value in ({}, [], None) or (_is_zero(value) and path.startswith((".spec", ".metadata"))):
                    continue  # an empty value and an absent one mean the same to the server
                found.append(f"{path}.{key}")
                continue
            found.extend(differences(value, actual[key], f"{path}.{key}", inner_quantity))
        found.extend(f"{path}.{key}" for key in sorted(_stale(path, desired, actual)))
        return found
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, actual, strict=True)):
            found.extend(differences(want, have, f"{path}[{index}]", quantity))
        return found
    return [] if _leaf_equal(desired, actual, quantity) else [path]


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def overlay(live: Any, desired: Any, path: str = "") -> Any:
    """`desired` laid over `live`: what we set wins, lists are ours whole, fields that are ours
    but no longer desired go, and fields only the server fills (a Service's clusterIP, defaults)
    are kept, so a replace never unsets them. `path` is where `desired` sits in its object."""
    if isinstance(desired, dict) and isinstance(live, dict):
        desired = _implied(path, desired)
        stale = _stale(path, desired, live)
        merged = {key: value for key, value in live.items() if key not in stale}
        for key, value in desired.items():
            merged[key] = overlay(live.get(key), value, f"{path}.{key}")
        return merged
    return desired
