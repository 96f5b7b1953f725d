"""Validate rendered objects against the upstream CRDs in ../shared/schemas (test data).

A real apiserver prunes fields its structural schema does not declare (and `kubectl apply
--validate=strict` rejects them), so every object without `x-kubernetes-preserve-unknown-fields`
is validated with `additionalProperties: false`: a misspelled field fails here first.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_REPO = Path(__file__).resolve().parents[1]
#: Where the upstream CRDs are: $ADCP_CRD_SCHEMAS, else `shared/schemas` beside the checkout (the
#: workplace layout, ../shared/schemas) or inside it.
_CANDIDATES = [Path(p) for p in [os.environ.get("ADCP_CRD_SCHEMAS")] if p] + [
    _REPO.parent / "shared" / "schemas", _REPO / "shared" / "schemas"]


def schemas_dir() -> Path:
    """The folder of CRD files; FileNotFoundError naming where it looked (never an empty set)."""
    for folder in _CANDIDATES:
        if any(folder.glob("*.yaml")):
            return folder
    raise FileNotFoundError("No upstream CRD files (ray.io_*.yaml, policy.karmada.io_*.yaml) in "
                            + ", ".join(map(str, _CANDIDATES)) + ": set ADCP_CRD_SCHEMAS to their folder.")


def _strict(node: Any, *, embedded: bool = False) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if k not in ("properties", "items", "additionalProperties")}
    is_embedded = node.get("x-kubernetes-embedded-resource", False)
    if "properties" in node:
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if is_embedded:  # apiVersion/kind/metadata of an embedded object are implied
            out["properties"].setdefault("apiVersion", {"type": "string"})
            out["properties"].setdefault("kind", {"type": "string"})
            out["properties"].setdefault("metadata", {"type": "object"})
    if "items" in node:
        out["items"] = _strict(node["items"])
    if "additionalProperties" in node:
        out["additionalProperties"] = _strict(node["additionalProperties"])
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    return out


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema of the served versions of every CRD file."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted(schemas_dir().glob("*.yaml")):
        crd = yaml.load(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
            props["kind"] = {"type": "string", "enum": [kind]}
            props["metadata"] = METADATA
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            out[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return out


#: The ObjectMeta fields manifests set, with the apiserver's rules for names and labels.
METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {
            "type": "string", "maxLength": 63, "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def kinds() -> set[tuple[str, str]]:
    return set(_crds())


def validate(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `obj` would not pass its CRD (or KeyError when no CRD
    in ../shared/schemas defines its apiVersion/kind)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = _crds()[key]
    jsonschema.Draft7Validator(schema, format_checker=None).validate(obj)
    for key_ in (obj["metadata"].get("labels") or {}):
        name = key_.rsplit("/", 1)[-1]
        if len(name) > 63 or not name:
            raise jsonschema.ValidationError(f"label key {key_!r}: name part must be 1-63 characters")


def errors(obj: dict[str, Any]) -> list[str]:
    """Every schema error of `obj`, as 'path: message' lines (empty when valid)."""
    schema = _crds()[(obj.get("apiVersion"), obj.get("kind"))]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
