"""Draws the Grafana dashboard's panels from a live Prometheus into a PNG (docs/dashboard.png).

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 [--minutes 10] [--out docs/dashboard.png]

No Grafana needed: every panel of deploy/helm/ragrail/files/dashboards/ragrail.json is laid out
on the same 24-column grid, each query run through Prometheus's /api/v1/query_range with
Grafana's variables replaced ($__rate_interval -> --rate, $pipeline and $namespace -> all), and plotted with
matplotlib in Grafana's dark colours. It shows what the dashboard shows, not pixel for pixel.
matplotlib is not a ragrail dependency: `pip install matplotlib` (anywhere on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "helm" / "ragrail" / "files" / "dashboards" / "ragrail.json"
BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ff780a", "#96d98d", "#ffee52",
           "#fade2a", "#ca95e5"]


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as reply:
        body = json.load(reply)
    if body["status"] != "success":
        raise ValueError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]  # type: ignore[no-any-return]


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def on_right(name: str, overrides: list[dict[str, Any]]) -> str | None:
    """The unit of the right axis when an override puts series ``name`` there, else None."""
    for override in overrides:
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byRegexp" and re.fullmatch(matcher.get("options", ""), name):
            props = {p["id"]: p["value"] for p in override.get("properties", [])}
            if props.get("custom.axisPlacement") == "right":
                return str(props.get("unit", ""))
    return None


def format_axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter

    def fmt(value: float, _pos: int) -> str:
        if unit == "percentunit":
            return f"{value * 100:.0f}%"
        if unit == "percent":
            return f"{value:.0f}%"
        if unit == "s":
            return f"{value * 1000:.0f} ms" if 0 < abs(value) < 1 else f"{value:.1f} s"
        if unit == "ms":
            return f"{value:.0f} ms" if abs(value) < 1000 else f"{value / 1000:.1f} s"
        return f"{value:.3g}"

    ax.yaxis.set_major_formatter(FuncFormatter(fmt))


def draw(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(Path(args.dashboard).read_text())
    panels = dashboard["panels"]
    end = time.time()
    start = end - args.minutes * 60
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.36  # inches per grid row
    fig = plt.figure(figsize=(24 * 0.8, rows * unit_h + 0.9), facecolor=BG)
    title = f"{dashboard['title']} — last {args.minutes:g} min, {datetime.fromtimestamp(end):%Y-%m-%d %H:%M}"
    fig.suptitle(title, color=TEXT, fontsize=14, x=0.01, ha="left", y=0.995)
    height = rows * unit_h + 0.9
    for panel in panels:
        pos = panel["gridPos"]
        left = pos["x"] / 24 + 0.004
        width = pos["w"] / 24 - 0.008
        top = 1 - (0.55 + pos["y"] * unit_h) / height
        if panel["type"] == "row":
            fig.text(left, top - 0.2 / height, panel["title"], color=TEXT, fontsize=12, fontweight="bold", va="top")
            continue
        h = (pos["h"] * unit_h - 0.75) / height
        ax = fig.add_axes((left + 0.025, top - h - 0.3 / height, width - 0.045, h), facecolor=PANEL)
        ax.set_title(panel["title"], color=TEXT, fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7)
        ax.grid(color=GRID, linewidth=0.6)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        overrides = panel.get("fieldConfig", {}).get("overrides", [])
        format_axis(ax, unit)
        right = None
        lines, names, colour = [], [], 0
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", args.rate).replace('"$pipeline"', '".*"').replace('"$namespace"', '".*"')
            for series in query_range(args.prometheus, expr, start, end, args.step):
                values = [(float(t), float(v)) for t, v in series["values"]]
                values = [(t, v) for t, v in values if math.isfinite(v)]
                if not values:
                    continue
                name = legend(target.get("legendFormat", ""), series["metric"])
                right_unit = on_right(name, overrides)
                target_ax = ax
                if right_unit is not None:
                    if right is None:
                        right = ax.twinx()
                        right.tick_params(colors=TEXT, labelsize=7)
                        format_axis(right, right_unit or unit)
                    target_ax = right
                xs = [datetime.fromtimestamp(t) for t, _ in values]
                (line,) = target_ax.plot(xs, [v for _, v in values], color=COLOURS[colour % len(COLOURS)],
                                         linewidth=1.2, linestyle="--" if right_unit is not None else "-")
                colour += 1
                lines.append(line)
                names.append(name)
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        if not lines:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_ylim(bottom=0)
            if right is not None:
                right.set_ylim(bottom=0)
            shown = sorted(zip(names, lines), key=lambda pair: pair[0])[:8]
            ax.legend([l for _, l in shown], [n for n, _ in shown], fontsize=6.5, loc="upper left", ncol=2,
                      facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, framealpha=0.8)
    fig.savefig(args.out, dpi=args.dpi, facecolor=BG)
    print(f"wrote {args.out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9090 (from `make observe`)")
    parser.add_argument("--minutes", type=float, default=10, help="time range ending now")
    parser.add_argument("--step", type=float, default=5, help="seconds between points")
    parser.add_argument("--rate", default="1m", help="what $__rate_interval becomes")
    parser.add_argument("--dashboard", default=str(DASHBOARD))
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("render_dashboard: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    draw(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
