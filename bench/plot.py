"""A chart of bench/results.json: throughput and latency per system.

python -m bench.plot [results.json] [out.png]    (default: docs/benchmarks.png)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

THROUGHPUT = {
    "enqueue_1": "enqueue, 1 client",
    "enqueue_4": "enqueue, 4 clients",
    "drain": "drain",
    "mixed": "mixed",
}
LATENCY = {"latency_p50": "p50", "latency_p99": "p99"}


def _value(doc: dict[str, Any], figure: str) -> float:
    found = doc.get("figures", {}).get(figure)
    return float(found["median"]) if found else 0.0


def _panel(
    axes: Any,
    docs: list[dict[str, Any]],
    figures: dict[str, str],
    ylabel: str,
    title: str,
    ncols: int,
) -> None:
    """One chart: a group of bars per system, one bar per figure, on a log scale."""
    width = 0.8 / len(figures)
    for i, (figure, label) in enumerate(figures.items()):
        xs = [x + (i - (len(figures) - 1) / 2) * width for x in range(len(docs))]
        axes.bar(xs, [_value(d, figure) for d in docs], width, label=label)
    axes.set_yscale("log")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.set_xticks(range(len(docs)), [d["system"] for d in docs], rotation=20, ha="right")
    _bold_leek(axes)
    axes.legend(ncols=ncols, fontsize="small")
    axes.grid(axis="y", which="both", alpha=0.3)


def _bold_leek(axes: Any) -> None:
    for label in axes.get_xticklabels():
        if label.get_text().startswith("leek"):
            label.set_fontweight("bold")


def plot(results: dict[str, Any], out: Path) -> None:
    docs = [d for d in results["systems"] if d.get("figures")]
    if not docs:
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9), constrained_layout=True)
    _panel(
        top,
        docs,
        THROUGHPUT,
        "tasks per second (log scale)",
        "Throughput: higher is better",
        ncols=4,
    )
    _panel(
        bottom,
        docs,
        LATENCY,
        "ms from enqueue to task start (log scale)",
        "Latency with idle workers: lower is better",
        ncols=1,
    )

    s, m = results["settings"], results["machine"]
    fig.suptitle(
        f"leek and its peers: N={s['n']:,}, median of {s['repeat']}, "
        f"{m.get('cores')} cores, Python {m.get('python')}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    here = Path(__file__).resolve().parent
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else here.parent / "docs" / "benchmarks.png"
    plot(json.loads(source.read_text()), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
