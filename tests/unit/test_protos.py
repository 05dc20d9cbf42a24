"""Proto hygiene: committed stubs match protos/, and every .proto follows the house style."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
SERVICES = ROOT / "services"
PROTOS = sorted(PROTO_ROOT.rglob("*.proto"))
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
REGENERATE = "generated stubs are stale; run `make protos` and commit the result"


def load_gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_stub(path: Path) -> bool:
    return path.name.endswith(STUB_SUFFIXES)


def test_there_are_protos() -> None:
    assert len(PROTOS) >= 5


# --- staleness --------------------------------------------------------------------------


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    load_gen_protos().generate(tmp_path)
    generated = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert any(_is_stub(p) for p in generated), "generate() produced no stubs"

    problems = []
    for relative in sorted(generated):
        committed = SERVICES / relative
        if not committed.exists():
            problems.append(f"missing: services/{relative}")
        elif committed.read_bytes() != (tmp_path / relative).read_bytes():
            problems.append(f"differs: services/{relative}")
    committed_stubs = {
        p.relative_to(SERVICES)
        for p in SERVICES.rglob("*_pb2*.py*")
        if _is_stub(p) and "__pycache__" not in p.parts
    }
    problems += [f"no proto generates: services/{p}" for p in sorted(committed_stubs - generated)]
    assert not problems, f"{REGENERATE}:\n" + "\n".join(problems)


# --- style ------------------------------------------------------------------------------

MESSAGE = re.compile(r"^\s*message\s+(\w+)\s*\{")
ENUM = re.compile(r"^\s*enum\s+(\w+)\s*\{")
ENUM_VALUE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*(-?\d+)\s*(\[.*\])?\s*;")
FIELD = re.compile(r"^\s*(?:optional\s+|repeated\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*\d+\s*(\[.*\])?\s*;")
SERVICE = re.compile(r"^\s*service\s+(\w+)\s*\{")
RPC = re.compile(
    r"^\s*rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"
)
ONEOF = re.compile(r"^\s*oneof\s+(\w+)\s*\{")
PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.M)


def _id(path: Path) -> str:
    return str(path.relative_to(PROTO_ROOT))


def upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()


def test_upper_snake() -> None:
    assert upper_snake("FallbackReason") == "FALLBACK_REASON"
    assert upper_snake("Role") == "ROLE"
    assert upper_snake("HTTPStatus") == "HTTP_STATUS"


@pytest.mark.parametrize("proto", PROTOS, ids=_id)
def test_package_matches_path(proto: Path) -> None:
    relative = proto.relative_to(PROTO_ROOT)
    assert len(relative.parts) == 4 and relative.parts[0] == "ragrail" and relative.parts[2] == "v1", (
        f"{relative}: protos must live at protos/ragrail/<svc>/v1/"
    )
    service = relative.parts[1]
    packages = PACKAGE.findall(proto.read_text())
    assert packages == [f"ragrail.{service}.v1"], f"{relative}: package must be ragrail.{service}.v1"


def enum_problems(text: str) -> list[str]:
    problems = []
    enum: str | None = None
    first = False
    for number, line in enumerate(text.splitlines(), 1):
        if found := ENUM.match(line):
            enum, first = found.group(1), True
        elif enum and (value := ENUM_VALUE.match(line)):
            name, tag = value.group(1), int(value.group(2))
            prefix = upper_snake(enum)
            if first and (tag != 0 or name != f"{prefix}_UNSPECIFIED"):
                problems.append(f"line {number}: enum {enum} must start with {prefix}_UNSPECIFIED = 0")
            elif not first and tag == 0:
                problems.append(f"line {number}: only {prefix}_UNSPECIFIED may be 0")
            elif not name.startswith(f"{prefix}_"):
                problems.append(f"line {number}: {name} must be prefixed with {prefix}_")
            first = False
        elif enum and line.strip().startswith("}"):
            enum = None
    return problems


def comment_problems(text: str) -> list[str]:
    lines = text.splitlines()
    problems = []
    in_enum = False
    for index, line in enumerate(lines):
        kind = None
        if MESSAGE.match(line):
            kind = "message"
        elif ENUM.match(line):
            kind, in_enum = "enum", True
        elif SERVICE.match(line):
            kind = "service"
        elif RPC.match(line):
            kind = "rpc"
        elif ONEOF.match(line):
            kind = "oneof"
        elif in_enum and ENUM_VALUE.match(line):
            kind = "enum value"
        elif FIELD.match(line):
            kind = "field"
        elif line.strip().startswith("}"):
            in_enum = False
        if kind is None:
            continue
        previous = lines[index - 1].strip() if index else ""
        if not previous.startswith("//"):
            problems.append(f"line {index + 1}: {kind} needs a // comment above it: {line.strip()}")
    return problems


def rpc_problems(files: dict[str, str]) -> tuple[int, list[str]]:
    """files: name -> proto text. Returns (number of rpcs, problems)."""
    problems = []
    owner: dict[str, str] = {}  # fully qualified type -> the rpc that uses it
    rpcs = 0
    for name, text in files.items():
        package = (PACKAGE.findall(text) or [""])[0]
        for number, line in enumerate(text.splitlines(), 1):
            if not (found := RPC.match(line)):
                continue
            rpcs += 1
            rpc, request, response = found.group(1), found.group(3), found.group(5)
            where = f"{name}:{number} rpc {rpc}"
            if request != f"{rpc}Request":
                problems.append(f"{where}: request type must be {rpc}Request, not {request}")
            if response != f"{rpc}Response":
                problems.append(f"{where}: response type must be {rpc}Response, not {response}")
            for type_name in (request, response):
                qualified = type_name if "." in type_name else f"{package}.{type_name}"
                if qualified in owner and owner[qualified] != where:
                    problems.append(f"{where}: {type_name} is already used by {owner[qualified]}")
                owner.setdefault(qualified, where)
    return rpcs, problems


@pytest.mark.parametrize("proto", PROTOS, ids=_id)
def test_enum_zero_values_are_unspecified(proto: Path) -> None:
    problems = enum_problems(proto.read_text())
    assert not problems, f"{_id(proto)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("proto", PROTOS, ids=_id)
def test_every_declaration_is_commented(proto: Path) -> None:
    problems = comment_problems(proto.read_text())
    assert not problems, f"{_id(proto)}:\n" + "\n".join(problems)


def test_rpc_types_are_named_after_the_rpc_and_not_shared() -> None:
    rpcs, problems = rpc_problems({_id(p): p.read_text() for p in PROTOS})
    assert rpcs >= 10
    assert not problems, "\n".join(problems)


# --- the style checks catch what they should --------------------------------------------

BAD = """syntax = "proto3";
package ragrail.demo.v1;

service DemoService {
  // Documented.
  rpc Get(GetRequest) returns (GetResponse);
  // Reuses Get's request and answers with a badly named type.
  rpc List(GetRequest) returns (stream Items);
}

// Documented.
enum ColorMode {
  // Wrong zero name.
  COLOR_UNSPECIFIED = 0;
  COLOR_MODE_RED = 1;
}

message GetRequest {
  // Documented.
  string name = 1;
  repeated int32 ids = 2;
  map<string, string> labels = 3;
  oneof pick {
    // Documented.
    string a = 4;
  }
}
"""


def test_checks_catch_violations() -> None:
    assert enum_problems(BAD) == ["line 14: enum ColorMode must start with COLOR_MODE_UNSPECIFIED = 0"]
    uncommented = [p.split(":")[0] + ":" + p.split(":")[1].split(" needs")[0] for p in comment_problems(BAD)]
    assert uncommented == [
        "line 4: service",
        "line 15: enum value",
        "line 18: message",
        "line 21: field",
        "line 22: field",
        "line 23: oneof",
    ]
    rpcs, problems = rpc_problems({"bad.proto": BAD})
    assert rpcs == 2
    assert len(problems) == 3, problems
    assert any("request type must be ListRequest" in p for p in problems)
    assert any("response type must be ListResponse" in p for p in problems)
    assert any("GetRequest is already used by bad.proto:6 rpc Get" in p for p in problems)


def test_enum_check_catches_a_second_zero_and_a_missing_prefix() -> None:
    text = "enum Role {\n  ROLE_UNSPECIFIED = 0;\n  ROLE_X = 0;\n  ADMIN = 2;\n}\n"
    assert enum_problems(text) == [
        "line 3: only ROLE_UNSPECIFIED may be 0",
        "line 4: ADMIN must be prefixed with ROLE_",
    ]
