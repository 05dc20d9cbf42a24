"""`make cluster-demo`: ragrail on a three-node Ray cluster, on this one machine.

Starts a head and two workers (loadtest/cluster.py: one declaring a GPU, the `demo`
accelerator and the label ragrail/pool=gpu, one CPU-only), deploys the services onto it with
`ragrail up --cluster` and the GPU profile (loadtest/cluster-gpu.yaml), prints where each
replica landed, asks one question through the gateway, and stops everything it started
(--hold: keep it all running until Ctrl-C; `ragrail status --address <printed>` then shows the
same table from another terminal).

    python loadtest/cluster_demo.py [--hold] [--keep-dir]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "services"))

from loadtest.cluster import Gateway, LocalCluster, node_env, placement_table, write_config  # noqa: E402

QUESTION = "Who founded Northwind Rail?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", action="store_true", help="keep the cluster and gateway running until Ctrl-C")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ragrail-cluster-demo-"))
    cluster = LocalCluster()
    gateway: Gateway | None = None
    started = time.monotonic()
    try:
        print(f"starting a head and two worker nodes on 127.0.0.1 (logs: {cluster.root})", flush=True)
        cluster.start()
        for name, node in cluster.nodes.items():
            spec = node.spec
            extra = " ".join(f"{k}={v:g}" for k, v in spec.resources.items())
            labels = ",".join(f"{k}={v}" for k, v in spec.labels.items())
            print(f"  {name:<10} CPU {spec.num_cpus} GPU {spec.num_gpus} {extra} [{labels}]", flush=True)
        print(f"cluster up at {cluster.address} ({time.monotonic() - started:.0f} s)", flush=True)

        config_path, _ = write_config(work, cluster)
        gateway = Gateway(config_path, work / "up.log", cluster.env())
        print(f"ragrail up --cluster {cluster.address} --config {config_path} (log: {gateway.log_path})", flush=True)
        deploy_started = time.monotonic()
        address = gateway.start(("--cluster", cluster.address))
        print(f"gateway ready on {address} ({time.monotonic() - deploy_started:.0f} s after up)\n", flush=True)

        print(placement_table(gateway.status()), "\n", flush=True)
        answer = subprocess.run(
            [sys.executable, "-m", "ragrail.cli.main", "ask", QUESTION, "--address", address, "--timeout", "120"],
            capture_output=True, text=True, timeout=180, env=node_env(),
        )
        print(f"$ ragrail ask {QUESTION!r}\n{answer.stdout.strip() or answer.stderr.strip()}\n", flush=True)
        if args.hold:
            print(f"holding: `ragrail status --address {address}`; Ctrl-C stops everything", flush=True)
            threading.Event().wait()
        return 0 if answer.returncode == 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if gateway is not None:
            code = gateway.stop()
            print(f"gateway stopped (exit {code}); services removed from the cluster", flush=True)
        cluster.stop()
        left = cluster.leftovers()
        print("cluster stopped" + (f"; processes left: {left}" if left else ", nothing left behind"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
