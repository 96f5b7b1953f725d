"""The shape of the house (issue 11): product modules stay under 500 lines, every public module
pins its public surface in `__all__` (httpx's test_exported_members), and the CLI package, a client
of the coordinator's API, never opens the state DB (no `sqlite3`, no `coordinator.state`).

Each check lists every violation it finds, so one run shows all the work left."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Product packages these checks cover: all of them, coordinator's subpackages included (issue 11).
ALL_PRODUCT = ["configs", "data", "train_jobs", "serve_apps", "raycluster", "karmada", "coordinator"]
PACKAGES = ALL_PRODUCT
MAX_LINES = 500


def modules(packages: list[str]) -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of `packages`."""
    out = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def is_public(name: str, path: Path) -> bool:
    """A module is public when no part of its dotted name starts with `_` (packages' `__init__`
    count under the package's name) and it is not a `__main__`."""
    return not any(part.startswith("_") for part in name.split(".")) and path.stem != "__main__"


def too_long(packages: list[str]) -> list[str]:
    found = []
    for _name, path in modules(packages):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(ROOT)}: {lines} lines")
    return found


def declared_all(path: Path) -> list[str] | None:
    """The names a module's `__all__` lists (read statically), None when it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            return list(ast.literal_eval(node.value))
    return None


def missing_all(packages: list[str]) -> list[str]:
    found = []
    for name, path in modules(packages):
        if is_public(name, path) and declared_all(path) is None:
            found.append(f"{path.relative_to(ROOT)}: no __all__")
    return found


def unknown_exports(packages: list[str]) -> list[str]:
    found = []
    for name, path in modules(packages):
        names = declared_all(path)
        if not is_public(name, path) or not names:
            continue
        module = importlib.import_module(name)
        found += [f"{name}.__all__ names {n!r}, which it does not define" for n in names if not hasattr(module, n)]
        if len(set(names)) != len(names):
            found.append(f"{name}.__all__ lists a name twice")
    return found


def cli_state_imports() -> list[str]:
    """Imports of sqlite3 or coordinator.state anywhere in coordinator/cli (module level or not)."""
    found = []
    for path in sorted((ROOT / "coordinator" / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                if n == "sqlite3" or n.startswith("sqlite3.") or n == "coordinator.state" \
                        or n.startswith("coordinator.state."):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {n}")
                    break
    return found


def structure_report(packages: list[str] = ALL_PRODUCT) -> list[str]:
    """Every violation of the checks below in `packages` (for the lead: `python -c 'from
    tests.unit.test_structure import structure_report; print(*structure_report(), sep="\\n")'`)."""
    return too_long(packages) + missing_all(packages) + unknown_exports(packages) + cli_state_imports()


def test_the_checks_see_the_packages():
    names = [n for n, _ in modules(PACKAGES)]
    assert "raycluster.gateway" in names and "karmada" in names and len(names) > 10
    assert not is_public("raycluster._machine", ROOT / "raycluster/_machine.py")
    assert not is_public("coordinator.__main__", ROOT / "coordinator/__main__.py")


def test_no_product_module_is_over_500_lines():
    found = too_long(PACKAGES)
    assert not found, "split these by concern:\n" + "\n".join(found)


def test_every_public_module_declares_all():
    found = missing_all(PACKAGES)
    assert not found, "add __all__ (the module's public names) to:\n" + "\n".join(found)


def test_every_name_in_all_exists():
    found = unknown_exports(PACKAGES)
    assert not found, "\n".join(found)


def test_the_cli_never_opens_the_state_db():
    found = cli_state_imports()
    assert not found, "the CLI is an API client; go through ctx.client instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("__all__ = ['a', 'b']\n", ["a", "b"]),
    ("__all__: list[str] = ['a']\n", ["a"]),
    ("x = 1\n", None),
])
def test_all_is_read_statically(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert declared_all(path) == expected
