"""The project's layout holds: no module of the model library (maata/), the trainers (training/)
or the services imports another in a cycle (any import, deferred ones in functions included: a
deferred import hides a cycle, it does not remove it), and every services module imports on its
own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maata", "training", "services")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere (at load time or deferred into a function),
    except in ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)

    visit(ast.parse(path.read_text()).body)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles() -> None:
    found = modules()
    # a package's __init__ is loaded before its submodules: an edge into a parent package is not a cycle
    graph = {name: {t for t in imports(path, name, set(found)) if not name.startswith(t + ".")}
             for name, path in found.items()}
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["services.common", "services.codec", "services.generation", "services.session",
                                     "services.gateway"])
def test_every_services_module_imports_alone(package: str) -> None:
    """Each module of ``package`` in its own fresh interpreter (an import that only works after
    another module was loaded first is a hidden cycle or a missing import)."""
    names = sorted(n for n in modules() if n == package or n.startswith(package + "."))
    script = "import importlib, subprocess, sys\n" + "".join(
        f"subprocess.run([sys.executable, '-c', 'import {n}'], check=True)\n" for n in names)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]


def test_the_codec_and_the_lm_raise_one_code_error() -> None:
    """One error type for bad codes, whichever model refuses them (services catch it once)."""
    import torch

    from maata import codec, lm, nn
    from tests.support.models import tiny_codec

    assert codec.CodeError is lm.CodeError is nn.CodeError
    assert issubclass(lm.CodeError, lm.LMInputError) and issubclass(lm.CodeError, ValueError)
    with pytest.raises(lm.CodeError, match="code values"):
        tiny_codec().decode(torch.full((1, 4, 2), 10_000))


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/support/ and tests/conftest.py, never in a test module
    (importing one runs its module-level setup and couples two test files)."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n.split(".")[-1].startswith("test_") or n.split(".")[0].startswith("test_")]
    assert found == []
