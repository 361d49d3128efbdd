"""protocol/ is sans-IO and its public surface is explicit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import protocol

PACKAGE = Path(protocol.__file__).parent
FORBIDDEN = (
    "asyncio", "aio_pika", "aiormq", "redis", "structlog", "socket", "ssl", "selectors",
    "aiobotocore", "botocore", "threading", "subprocess", "time", "runtime", "controller",
)  # fmt: skip


def test_no_module_imports_io() -> None:
    """Statically: no import statement in protocol/ names an I/O, clock or upper-layer module."""
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []


def test_importing_protocol_loads_no_io_module() -> None:
    """Dynamically, in a fresh interpreter: nothing protocol imports pulls I/O in either."""
    code = (
        "import sys, json; before = set(sys.modules); import protocol; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
    )
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN] == []


def test_public_surface() -> None:
    """Every class and function the package re-exports is in ``__all__`` and documented."""
    defined = {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("protocol.")
    }
    assert defined <= set(protocol.__all__)
    for name in protocol.__all__:
        value = getattr(protocol, name)
        assert name.isupper() or value.__doc__, f"{name} has no docstring"
