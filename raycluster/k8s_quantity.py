"""Kubernetes resource quantities ("3500m", "64Gi") as numbers: what KubeRay worker groups and
Karmada's cluster summaries state capacity in, read the same way by the planner and discovery."""

from __future__ import annotations

from decimal import InvalidOperation
from typing import Any

from configs.errors import InputError

__all__ = ["parse_quantity"]


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("3500m", "64Gi", "2", 4) as a float; InputError when malformed."""
    from kubernetes.utils import parse_quantity as _parse  # the kubernetes client is slow to import

    try:
        return float(_parse(value))
    except (ValueError, TypeError, InvalidOperation) as e:
        raise InputError(f'Got "{value}" for a Kubernetes quantity.', allowed='e.g. "2", "3500m", "64Gi", "1e3"') from e
