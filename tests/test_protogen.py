"""The generated gRPC code: made by ``services.protogen`` into ``maata_protos/v1`` (outside the
model library), never on import; the model library imports no network code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from services import protogen

ROOT = Path(__file__).resolve().parents[1]


def test_generate_writes_every_proto_rerooted(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    (out).mkdir()
    (out / "stale_pb2.py").write_text("# a module of a removed .proto\n")
    written = {p.name for p in protogen.generate(out)}
    stems = [p.stem for p in protogen.protos()]
    assert written == {"__init__.py"} | {f"{s}{suffix}" for s in stems for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    for path in out.iterdir():
        text = path.read_text()
        assert "from maata.v1 import" not in text and "import maata.v1" not in text, path.name
    assert "from maata_protos.v1 import common_pb2" in (out / "codec_pb2.py").read_text()


def test_reroot_refuses_an_import_form_it_does_not_know() -> None:
    assert protogen.reroot("from maata.v1 import common_pb2 as c\n") == "from maata_protos.v1 import common_pb2 as c\n"
    with pytest.raises(RuntimeError, match="unexpected import form"):
        protogen.reroot("import maata.v1.common_pb2\n")


def test_importing_the_services_runs_no_protoc() -> None:
    code = ("import sys, services, services.gateway.partner, services.codec.service\n"
            "assert 'services.protogen' not in sys.modules\n"
            "assert 'grpc_tools.protoc' not in sys.modules, sorted(m for m in sys.modules if 'grpc_tools' in m)\n"
            "import maata_protos.v1.conversation_pb2 as c\n"
            "assert c.DESCRIPTOR.package == 'maata.v1'\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]


def test_the_model_library_imports_no_network_code() -> None:
    network = ("grpc", "grpc_tools", "maata_protos", "services", "aiohttp", "aiortc", "redis")
    found = []
    for path in sorted((ROOT / "maata").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in network]
    assert found == [], "the model library imports network code (generated gRPC modules belong in maata_protos/v1)"
