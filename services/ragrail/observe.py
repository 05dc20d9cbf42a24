"""`make observe`: a real Prometheus on loopback, scraping the local stack, with the chart's alert rules.

    python -m ragrail.observe [--config ragrail.yaml] [--port 9090] [--scrape-interval 5s]

It scrapes the gateway's ``/metrics`` (``gateway.metrics_port``, 9464) and Ray's metrics
endpoint (``serve.metrics_export_port``, 9465: Serve's ``ray_serve_*`` series and the
services' ``ray_ragrail_service_*``), loads ``deploy/helm/ragrail/files/prometheus/ragrail-rules.yaml``
(the rules the Helm chart ships as a PrometheusRule), keeps its data in a temporary folder
and prints its URL. Ctrl-C stops it and deletes the data. Start the stack first (`make up`);
targets that are not up yet are simply shown as down until they are.

Prometheus is Debian's ``prometheus`` package (``scripts/install_tools.sh`` installs it).
The same functions start the Prometheus of ``tests/integration/test_observe.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = REPO_ROOT / "deploy" / "helm" / "ragrail" / "files" / "prometheus" / "ragrail-rules.yaml"
DASHBOARD_FILE = REPO_ROOT / "deploy" / "helm" / "ragrail" / "files" / "dashboards" / "ragrail.json"
INSTALL_HINT = "install Debian's prometheus package: `bash scripts/install_tools.sh` (as root) or `make tools`"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def prometheus_config(
    targets: Mapping[str, str], rules_file: Path | None, scrape_interval: str = "5s"
) -> dict[str, Any]:
    """A Prometheus config: one job per target (job name -> host:port), the rules, one interval."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in targets.items()
        ],
    }
    if rules_file is not None:
        config["rule_files"] = [str(rules_file.resolve())]
    return config


@dataclass
class RunningPrometheus:
    process: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log_path: Path

    def query(self, expr: str, timeout: float = 10) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``); raises on a PromQL error."""
        return self.api("query", {"query": expr}, timeout)["result"]  # type: ignore[no-any-return]

    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as error:  # 400/422: bad PromQL, with Prometheus's reason
            body = json.load(error)
        if body.get("status") != "success":
            raise ValueError(f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to our Prometheus (by its pid), then its temporary data is deleted."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return int(self.process.returncode or 0)


def start_prometheus(
    targets: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 9090,
    rules_file: Path | None = RULES_FILE,
    scrape_interval: str = "5s",
    ready_timeout_s: float = 30,
    binary: str | None = None,
) -> RunningPrometheus:
    """Starts Prometheus with its storage in a new temporary folder; returns once it is ready."""
    binary = binary or prometheus_binary()
    if binary is None:
        raise FileNotFoundError(f"prometheus not found: {INSTALL_HINT}")
    if rules_file is not None and not rules_file.exists():
        raise FileNotFoundError(f"alert rules not found: {rules_file}")
    workdir = Path(tempfile.mkdtemp(prefix="ragrail-prometheus-"))
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(targets, rules_file, scrape_interval), sort_keys=False))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={host}:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us; we stop it in order
        )
    running = RunningPrometheus(process, f"http://{host}:{port}", workdir, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if process.poll() is not None:
            text = log_path.read_text(errors="replace")[-3000:]
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{text}")
        try:
            with urllib.request.urlopen(f"{running.url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return running
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"prometheus not ready on {running.url} within {ready_timeout_s:.0f} s")
        time.sleep(0.2)


def stack_targets(settings: Any) -> dict[str, str]:
    """What the local stack exposes, from its config: the gateway's and Ray's metrics endpoints."""
    targets = {}
    if settings.gateway.metrics_port:
        targets["ragrail-gateway"] = f"{_loopback(settings.gateway.host)}:{settings.gateway.metrics_port}"
    if settings.serve.metrics_export_port:
        targets["ray"] = f"127.0.0.1:{settings.serve.metrics_export_port}"
    return targets


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragrail-observe", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the stack's config (default: the packaged ragrail.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="where Prometheus listens (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("RAGRAIL_PROMETHEUS_PORT", 9090)))
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--rules", type=Path, default=RULES_FILE, help="alert rules file (default: the chart's)")
    args = parser.parse_args(argv)

    from ragrail.common.config import load_settings

    if prometheus_binary() is None:
        print(f"ragrail observe: prometheus not found; {INSTALL_HINT}", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    targets = stack_targets(settings)
    if not targets:
        print("ragrail observe: the config exposes no metrics (gateway.metrics_port is 0, "
              "serve.metrics_export_port unset)", file=sys.stderr)
        return 2
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        prometheus = start_prometheus(
            targets, host=args.host, port=args.port, rules_file=args.rules, scrape_interval=args.scrape_interval
        )
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"ragrail observe: {exc}", file=sys.stderr)
        return 1
    print(f"Prometheus: {prometheus.url}  (targets: {prometheus.url}/targets, alerts: {prometheus.url}/alerts)")
    for job, address in targets.items():
        print(f"  scraping {job}: http://{address}/metrics every {args.scrape_interval}")
    print(f"  alert rules: {args.rules}")
    print(f"  Grafana: add {prometheus.url} as a Prometheus data source and import {DASHBOARD_FILE}")
    print("Ctrl-C to stop.", flush=True)
    try:
        while not stop and prometheus.process.poll() is None:
            time.sleep(0.2)
    finally:
        code = prometheus.process.poll()
        if code is not None:
            print(prometheus.log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        prometheus.stop()
    if code is not None:
        print(f"ragrail observe: prometheus exited with {code}", file=sys.stderr)
        return 1
    print("Prometheus stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
