"""Reading YAML files: the one place the platform parses YAML from disk, so that a missing or
broken file is always reported the same way, as a user error naming the file (and, for a parse
error, the line and column).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from configs.errors import AdcpError, ConfigError

__all__ = ["read_yaml", "read_yaml_documents"]


def read_yaml(path: str | Path, what: str = "YAML file", *, error: type[AdcpError] = ConfigError,
              hint: str | None = None) -> Any:
    """The document in the YAML file `path` (None for an empty file).

    Raises `error` (ConfigError unless told) when the file does not exist or cannot be read, or is
    not valid YAML; `what` names the file in the message ("Platform file", "Config file", ...).
    """
    return _parse(path, what, error, hint, lambda text: yaml.safe_load(text))


def read_yaml_documents(path: str | Path, what: str = "YAML file", *, error: type[AdcpError] = ConfigError,
                        hint: str | None = None) -> list[Any]:
    """Every document in the YAML file `path` (a `---`-separated stream), empty ones left out.
    Raises as `read_yaml` does."""
    return _parse(path, what, error, hint, lambda text: [d for d in yaml.safe_load_all(text) if d is not None])


def _parse(path: str | Path, what: str, error: type[AdcpError], hint: str | None, parse) -> Any:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise error(f"{what} {file} does not exist.", hint=hint) from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {file} cannot be read: {e}.", hint=hint) from e
    try:
        return parse(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {file} is not valid YAML{_where(e)}: {_problem(e)}", hint=hint) from e


def _where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _problem(e: yaml.YAMLError) -> str:
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = ", ".join(p for p in parts if p)
    return text + "." if text else str(e)
