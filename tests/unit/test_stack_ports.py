"""The local stack's ports: each stack gets its own fast-path ports, and a loopback host keeps Ray on loopback."""

from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

import pytest
from ragrail import stack
from ragrail.common.errors import FailedPrecondition
from ragrail.stack import PORT_BLOCK, LocalStack, free_port_block


def test_a_port_block_skips_blocks_where_anything_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    base = 20_000
    busy = {base + 5, base + 3 * PORT_BLOCK}  # inside the first block; the first port of the fourth
    monkeypatch.setattr(stack, "PORT_BLOCKS_FROM", base)
    monkeypatch.setattr(stack, "PORT_BLOCKS_TO", base + 5 * PORT_BLOCK + 1)  # five candidate blocks
    monkeypatch.setattr(stack, "_bindable", lambda port: port not in busy)
    chosen = {free_port_block(rng=random.Random(seed)) for seed in range(30)}
    assert chosen == {base + PORT_BLOCK, base + 2 * PORT_BLOCK, base + 4 * PORT_BLOCK}


def test_a_port_someone_listens_on_is_not_bindable() -> None:
    with socket.socket(socket.AF_INET) as busy:  # IPv4 only: [::] must still see it taken
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        assert stack._bindable(busy.getsockname()[1]) is False
    assert stack._bindable(stack.free_port()) is True


def test_no_free_block_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_bindable", lambda port: False)
    with pytest.raises(FailedPrecondition, match="no 64 free consecutive ports"):
        free_port_block()


def test_fast_path_env_gives_each_stack_its_own_direct_ingress_ports() -> None:
    from ragrail.common.config import load_settings

    stacks = [LocalStack(load_settings(None)) for _ in range(2)]
    try:
        envs = [s.fast_path_env() for s in stacks]
    finally:
        for s in stacks:
            for folder in [s.temp_dir, *s.extra_dirs]:
                shutil.rmtree(folder, ignore_errors=True)
    for env in envs:
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        grpc_min, grpc_max = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"])
        http_min, http_max = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
        assert grpc_max - grpc_min == http_max - http_min == PORT_BLOCK - 1
        assert not set(range(grpc_min, grpc_max + 1)) & set(range(http_min, http_max + 1))
    # Blocks are random: two stacks started in the same second could draw the same one (about
    # 1 in 90), so this checks the mechanism, not that luck: each stack has its own HAProxy files.
    assert envs[0]["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != envs[1]["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]


def test_ports_are_checked_on_ipv4_where_ipv6_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args)  # type: ignore[arg-type]

    with real(socket.AF_INET) as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(stack.socket, "socket", no_ipv6)
        assert stack._bindable(port) is False
        assert stack._bindable(stack.free_port()) is True


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
        ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.2", False), ("ray-head", False),
    ],
)
def test_which_serve_hosts_keep_the_local_ray_cluster_on_loopback(host: str, loopback: bool) -> None:
    assert stack.is_loopback(host) is loopback


def test_processes_naming_the_stacks_folders_are_stopped_and_no_other(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ragrail.stack import stop_processes_using

    ours = tmp_path / "rgh-ours"
    other = tmp_path / "rgh-other"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    orphan = subprocess.Popen([*sleeper, str(ours / "haproxy.cfg")])
    bystander = subprocess.Popen([*sleeper, str(other / "haproxy.cfg")])
    try:
        assert stop_processes_using([ours]) == [orphan.pid]
        assert orphan.wait(timeout=10) != 0
        assert bystander.poll() is None
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()
