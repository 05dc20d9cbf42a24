"""A real gateway over instant stub backends, for the load test's smoke test.

    python tests/loadtest/stub_gateway.py      # prints "port <N>", serves until stdin closes or SIGTERM

The stubs are benchmarks/gateway_overhead.py's: every stage answers at once,
so the summarize_sentiment pipeline's classifier gets a non-label and falls
back (INVALID_OUTPUT), and rag@2's response cache answers repeats. That gives
the locustfile answers, cached answers and fallbacks to report, without Ray or
any model. Not a stack: one process, nothing on disk but a temp folder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stubs_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gateway_overhead", ROOT / "benchmarks" / "gateway_overhead.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


async def serve(tmp: Path) -> None:
    from ragrail.common.config import load_settings
    from ragrail.gateway.server import start_gateway

    bench = _stubs_module()
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    for spec in resources.files("ragrail").joinpath("pipelines").iterdir():
        if spec.name.endswith(".yaml"):
            (pipelines / spec.name).write_text(spec.read_text())
    settings = load_settings(
        None, data_dir=str(tmp / "data"),
        gateway={"port": 0, "metrics_port": 0, "pipelines_dir": str(pipelines)},
    )
    stubs = bench.Stubs()
    gateway = await start_gateway(settings, backends_for=lambda spec: bench.stub_backends(stubs))
    print(f"port {gateway.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()
    await gateway.stop(0)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ragrail-stub-gw-"))
    try:
        asyncio.run(serve(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
