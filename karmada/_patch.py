"""JSON patch (RFC 6902 add/remove/replace) and image-name handling, the way Karmada's override
manager applies them: the exact difference between two objects as patch operations, those
operations applied to a copy, and image names split into registry and the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from configs.errors import InputError

Op = dict[str, Any]


def escape(key: str) -> str:
    """One JSON-pointer reference token: '~' becomes '~0' and '/' becomes '~1' (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def pointer(*tokens: str | int) -> str:
    return "".join("/" + escape(str(t)) for t in tokens)


def tokens(path: str) -> list[str]:
    """The reference tokens of a JSON pointer; raises InputError when it does not start with '/'."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise InputError(f'Got "{path}" for a JSON pointer.', allowed="'' or a path starting with '/'")
    return [unescape(t) for t in path[1:].split("/")]


def diff(old: Any, new: Any, path: str = "", *, skip: Callable[[str], bool] | None = None) -> list[Op]:
    """Operations that turn `old` into `new`, on leaves where both are objects or lists (a changed
    scalar, or a changed type, is one `replace`). Paths for which `skip(path)` is true are left out."""
    if skip and skip(path):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return _diff_dict(old, new, path, skip)
    if isinstance(old, list) and isinstance(new, list):
        return _diff_list(old, new, path, skip)
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": copy.deepcopy(new)}]


def _diff_dict(old: dict, new: dict, path: str, skip: Callable[[str], bool] | None) -> list[Op]:
    ops: list[Op] = []
    for key, value in old.items():
        sub = path + pointer(key)
        if key not in new:
            ops += [] if skip and skip(sub) else [{"op": "remove", "path": sub}]
        else:
            ops += diff(value, new[key], sub, skip=skip)
    for key, value in new.items():
        sub = path + pointer(key)
        if key not in old and not (skip and skip(sub)):
            ops.append({"op": "add", "path": sub, "value": copy.deepcopy(value)})
    return ops


def _diff_list(old: list, new: list, path: str, skip: Callable[[str], bool] | None) -> list[Op]:
    common = min(len(old), len(new))
    ops: list[Op] = []
    for i in range(common):
        ops += diff(old[i], new[i], path + pointer(i), skip=skip)
    # Removals from the end first, so every index still names the element it meant.
    ops += [{"op": "remove", "path": path + pointer(i)} for i in range(len(old) - 1, common - 1, -1)]
    ops += [{"op": "add", "path": path + pointer(i), "value": copy.deepcopy(new[i])}
            for i in range(common, len(new))]
    return ops


def apply(doc: Any, ops: list[Op]) -> Any:
    """`doc` with `ops` applied in order (a deep copy; `doc` is unchanged). Raises InputError naming
    the operation when a path does not exist (replace/remove) or its parent does not (add)."""
    out = copy.deepcopy(doc)
    for op in ops:
        try:
            out = _apply_one(out, op)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise InputError(f"Cannot apply {op.get('op')} at {op.get('path')!r}: {e!r}.",
                             hint="The override does not fit this object.") from e
    return out


def _apply_one(doc: Any, op: Op) -> Any:
    kind, toks = op["op"], tokens(op["path"])
    if not toks:
        if kind in ("add", "replace"):
            return copy.deepcopy(op["value"])
        raise ValueError("cannot remove the whole document")
    parent = doc
    for t in toks[:-1]:
        parent = parent[_index(parent, t)]
    last = toks[-1]
    if isinstance(parent, list):
        _apply_list(parent, kind, last, op)
    elif isinstance(parent, dict):
        _apply_dict(parent, kind, last, op)
    else:
        raise TypeError(f"{type(parent).__name__} has no members")
    return doc


def _apply_list(parent: list, kind: str, last: str, op: Op) -> None:
    if kind == "add":
        i = len(parent) if last == "-" else _index(parent, last, allow_end=True)
        parent.insert(i, copy.deepcopy(op["value"]))
    elif kind == "replace":
        parent[_index(parent, last)] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[_index(parent, last)]
    else:
        raise ValueError(f"unsupported op {kind}")


def _apply_dict(parent: dict, kind: str, last: str, op: Op) -> None:
    if kind == "add":
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        if last not in parent:
            raise KeyError(last)
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise ValueError(f"unsupported op {kind}")


def _index(container: Any, token: str, *, allow_end: bool = False) -> Any:
    if isinstance(container, dict):
        return token
    if not isinstance(container, list):
        raise TypeError(f"{type(container).__name__} has no members")
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise ValueError(f"{token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise IndexError(f"index {i} out of range (length {len(container)})")
    return i


def get(doc: Any, path: str) -> Any:
    """The value at a JSON pointer; raises InputError when it does not exist."""
    node = doc
    try:
        for t in tokens(path):
            node = node[_index(node, t)]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise InputError(f"Nothing at {path!r}: {e!r}.") from e
    return node


def split_image(image: str) -> tuple[str, str]:
    """(registry host, rest) of an image name, split as Karmada's imageparser does: the first
    path part is a host only when it holds '.' or ':' or is 'localhost'."""
    head, sep, rest = image.partition("/")
    if not sep or (not any(c in head for c in ".:") and head != "localhost"):
        return "", image
    return head, rest


def with_registry(image: str, registry: str) -> str:
    """`image` with its registry host replaced ('' removes it)."""
    _, rest = split_image(image)
    return f"{registry}/{rest}" if registry else rest


def image_paths(doc: Any, path: str = "") -> list[str]:
    """JSON pointers of every container image in `doc` (the `image` of each item of any
    `containers` or `initContainers` list), in document order."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            sub = path + pointer(key)
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [sub + pointer(i, "image") for i, c in enumerate(value)
                          if isinstance(c, dict) and isinstance(c.get("image"), str)]
            else:
                found += image_paths(value, sub)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += image_paths(value, path + pointer(i))
    return found
