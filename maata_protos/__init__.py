"""The Python gRPC code of Maata's wire API (proto package ``maata.v1``, sources in
``protos/maata/v1/``): ``maata_protos.v1`` holds the ``*_pb2`` / ``*_pb2_grpc`` modules that
``python -m services.protogen`` generates at build time (``make setup``, the Dockerfiles).

It is a package of its own, beside ``maata`` (the model library, no network code) and
``services`` (which imports it): generated code is build output, git-ignored, never written on
import.
"""

from pathlib import Path

if not (Path(__file__).parent / "v1" / "__init__.py").exists():
    raise ImportError("maata_protos.v1 has not been generated: run `make setup` "
                      "(or `python -m services.protogen`) in the repository root")
