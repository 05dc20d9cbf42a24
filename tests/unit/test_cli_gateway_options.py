"""The gateway's command-line options that are not config-file keys: the plaintext health port."""

from __future__ import annotations

import pytest

from ragrail.cli.main import HEALTH_HOST_ENV, HEALTH_PORT_ENV, _parser


@pytest.mark.parametrize("command", ["gateway", "up"])
def test_health_port_is_off_by_default(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEALTH_PORT_ENV, raising=False)
    monkeypatch.delenv(HEALTH_HOST_ENV, raising=False)
    args = _parser().parse_args([command])
    assert args.health_port is None and args.health_host is None


def test_health_port_from_the_environment_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEALTH_PORT_ENV, "8081")
    monkeypatch.setenv(HEALTH_HOST_ENV, "10.1.2.3")
    args = _parser().parse_args(["gateway"])
    assert (args.health_host, args.health_port) == ("10.1.2.3", 8081)
    args = _parser().parse_args(["gateway", "--health-port", "9000", "--health-host", "fd00::5"])
    assert (args.health_host, args.health_port) == ("fd00::5", 9000)


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1"])
def test_a_bad_health_port_is_a_usage_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEALTH_PORT_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["gateway", "--health-port", value])
    assert info.value.code == 2
    monkeypatch.setenv(HEALTH_PORT_ENV, value)
    with pytest.raises(SystemExit):
        _parser().parse_args(["gateway"])


def test_host_port_brackets_ipv6() -> None:
    from ragrail.common.server import host_port

    assert host_port("0.0.0.0", 8081) == "0.0.0.0:8081"
    assert host_port("fd00::5", 8081) == "[fd00::5]:8081"
    assert host_port("[::]", 8081) == "[::]:8081"
