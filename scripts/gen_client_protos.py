"""Generates ragrail-client's copy of the gateway stubs (clients/python/src/ragrail_client/v1/).

    python scripts/gen_client_protos.py            # writes into the client package
    python scripts/gen_client_protos.py --out DIR  # writes elsewhere (the staleness test)

The client ships only the gateway contract, under its own import path, so it installs
without the server. The descriptor keeps its file name (ragrail/gateway/v1/gateway.proto):
the client and the server stubs can be loaded in one process, and the wire contract is
byte-for-byte the server's. protoc names the message module by the proto's path
(``from ragrail.gateway.v1 import gateway_pb2``); that one import is rewritten to the
client's package. ``_pb2_grpc.pyi`` (typed stubs, sync and grpc.aio) comes from
mypy-protobuf's plugin; grpcio-tools writes none.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO = "ragrail/gateway/v1/gateway.proto"
OUT = ROOT / "clients" / "python" / "src" / "ragrail_client" / "v1"
SERVER_IMPORT = "from ragrail.gateway.v1 import gateway_pb2"
CLIENT_IMPORT = "from ragrail_client.v1 import gateway_pb2"
FILES = ("gateway_pb2.py", "gateway_pb2.pyi", "gateway_pb2_grpc.py", "gateway_pb2_grpc.pyi")


def _mypy_grpc_plugin() -> str:
    found = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    found = found or shutil.which("protoc-gen-mypy_grpc")
    if not found:
        sys.exit("protoc-gen-mypy_grpc not found: pip install mypy-protobuf (in the dev extra)")
    return found


def to_client(text: str) -> str:
    """The server's generated module text as the client ships it: its own import path."""
    return text.replace(SERVER_IMPORT, CLIENT_IMPORT)


def generate(out_dir: Path) -> None:
    well_known = resources.files("grpc_tools").joinpath("_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        generated = Path(tmp) / Path(PROTO).parent
        for name in FILES:
            (out_dir / name).write_text(to_client((generated / name).read_text()))
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gateway stubs (scripts/gen_client_protos.py); do not edit."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
