"""Kubernetes names and label values made valid whatever the user typed.

A site or model called `Fab.Ä-Line 3` must still give objects the apiserver accepts: DNS-1123
labels/subdomains for names, <= 63 characters for label values. Shortened names keep a hash of the
original so two long names never collide.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["dns_label", "dns_name", "label_value"]

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, max_len: int = 63) -> str:
    """`text` as a DNS-1123 label (lower case alphanumerics and '-', starts with a letter, ends
    alphanumeric, <= max_len). Unchanged when already valid; otherwise a hash of the original is
    appended so different inputs stay different."""
    if max_len < 10:
        raise ValueError("max_len must be at least 10")
    if re.fullmatch(r"[a-z]([a-z0-9-]*[a-z0-9])?", text) and len(text) <= max_len:
        return text
    base = _NOT_DNS.sub("-", _ascii(text).lower()).strip("-")
    if not base or not base[0].isalpha():
        base = "x-" + base if base else "x"
    suffix = _digest(text)
    base = base[: max_len - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def dns_name(*parts: str, max_len: int = 63) -> str:
    """Parts joined with '-' as one DNS label (object names: most kinds allow 253, but Services and
    the names KubeRay derives from a RayCluster's name need a label)."""
    return dns_label("-".join(p for p in parts if p), max_len)


def label_value(text: str) -> str:
    """`text` as a label value: <= 63 of [A-Za-z0-9._-], starting and ending alphanumeric, or ''."""
    if re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?", text) and len(text) <= 63:
        return text
    base = _NOT_LABEL.sub("-", _ascii(text)).strip("._-")
    suffix = _digest(text)
    base = base[: 63 - len(suffix) - 1].rstrip("._-")
    return f"{base}-{suffix}" if base else suffix
