"""Generates the Python gRPC stubs from protos/ (the one way to do it).

    python scripts/gen_protos.py            # writes into services/
    python scripts/gen_protos.py --out DIR  # writes elsewhere (the staleness test)

Stubs land next to the service code that implements them:
protos/ragrail/embedding/v1/embedding.proto -> services/ragrail/embedding/v1/embedding_pb2*.py
grpcio-tools is pinned in pyproject.toml to grpcio's version, because the
generated code checks the runtime version at import.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    well_known = resources.files("grpc_tools").joinpath("_proto")
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {proto}")
    for package_dir in {p.parent.relative_to(PROTO_ROOT) for p in proto_files()}:
        init = out_dir / package_dir / "__init__.py"
        if not init.exists():
            init.write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "services")
    out = parser.parse_args().out
    generate(out)
    if out == ROOT / "services":  # ragrail-client carries its own copy of the gateway stubs
        import gen_client_protos  # scripts/ is on sys.path when run as a script

        gen_client_protos.generate(gen_client_protos.OUT)


if __name__ == "__main__":
    main()
