"""Import rules: the core is pure, the simulator is independent of the codec, adapters never reach upwards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kioskd"

#: never imported by the core: I/O, clocks, threads and logging belong to the edges
FORBIDDEN_IN_CORE = frozenset(
    {"asyncio", "sounddevice", "soxr", "gpiozero", "websockets", "structlog", "yaml", "time", "threading",
     "logging"}
)
CORE_MODULES = sorted((PACKAGE / "core").glob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, absolute and dotted, anywhere in the file (lazy imports included).

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a module); relative imports resolve against
    ``package``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


def imports(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(), package)


def tops(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_import_parser_sees_every_form() -> None:
    """The checker itself finds plain, aliased, from-, relative and function-local imports."""
    source = ("import time\nimport os.path as p\nfrom asyncio import sleep\nfrom . import realtime\n"
              "from ..errors import classify\ndef f() -> None:\n    import logging\n")
    found = imports_of(source, "kioskd.core")
    assert {"time", "os.path", "asyncio", "kioskd.core.realtime", "kioskd.errors", "logging"} <= found
    assert tops(found) & FORBIDDEN_IN_CORE == {"time", "asyncio", "logging"}
    assert "kioskd.core.pcm" in imports(PACKAGE / "core" / "events.py")


def test_core_modules_exist() -> None:
    """The core modules this test guards are where the design puts them."""
    names = {p.stem for p in CORE_MODULES}
    assert {"events", "turn", "realtime", "backoff", "pcm"} <= names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_imports_no_io_clock_thread_or_logging(path: Path) -> None:
    """No core module imports asyncio, device, socket, logging, YAML, clock or thread modules, even lazily."""
    bad = tops(imports(path)) & FORBIDDEN_IN_CORE
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_imports_only_stdlib_numpy_and_kioskd_core_or_errors(path: Path) -> None:
    """Core modules import only the standard library, numpy, kioskd.errors and kioskd.core.*."""
    for name in imports(path):
        top = name.split(".")[0]
        if top == "kioskd":
            assert name == "kioskd.errors" or name.startswith("kioskd.errors.") or name == "kioskd.core" \
                or name.startswith("kioskd.core."), f"{path.name} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top in ("numpy", "__future__"), f"{path.name} imports {name}"


def test_importing_the_core_loads_no_edge_library() -> None:
    """Importing every core module in a fresh interpreter pulls in none of the edge libraries."""
    mods = ", ".join(module_name(p) for p in CORE_MODULES)
    code = (f"import sys, importlib\nfor m in '{mods}'.split(', '): importlib.import_module(m)\n"
            "print(','.join(sorted(m for m in ('asyncio', 'sounddevice', 'soxr', 'gpiozero', 'websockets', "
            "'structlog', 'yaml') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ""


def files_under(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_sim_never_imports_the_codec() -> None:
    """kioskd/sim is written from the protocol reference: it never imports kioskd.core.realtime."""
    for path in files_under("sim"):
        found = imports(path)
        assert "kioskd.core.realtime" not in found, f"{path.name} imports kioskd.core.realtime"
        assert not any(n.startswith("kioskd.core.realtime.") for n in found), path.name


def test_adapters_never_import_daemon_or_cli() -> None:
    """kioskd/adapters never import kioskd.daemon or kioskd.cli (only the composition root sees everything)."""
    for path in files_under("adapters"):
        for name in imports(path):
            for upper in ("kioskd.daemon", "kioskd.cli"):
                assert name != upper and not name.startswith(upper + "."), f"{path.name} imports {name}"
