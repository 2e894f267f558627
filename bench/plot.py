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


def _bold_leek(axes: Any) -> None:
    for label in axes.get_xticklabels():
        if label.get_text().startswith("leek"):
            label.set_fontweight("bold")


def plot(results: dict[str, Any], out: Path) -> None:
    docs = [d for d in results["systems"] if d.get("figures")]
    if not docs:
        return
    names = [d["system"] for d in docs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9), constrained_layout=True)
    width = 0.8 / len(THROUGHPUT)
    for i, (figure, label) in enumerate(THROUGHPUT.items()):
        xs = [x + (i - (len(THROUGHPUT) - 1) / 2) * width for x in range(len(docs))]
        top.bar(xs, [_value(d, figure) for d in docs], width, label=label)
    top.set_yscale("log")
    top.set_ylabel("tasks per second (log scale)")
    top.set_title("Throughput: higher is better")
    top.set_xticks(range(len(docs)), names, rotation=20, ha="right")
    _bold_leek(top)
    top.legend(ncols=4, fontsize="small")
    top.grid(axis="y", which="both", alpha=0.3)

    width = 0.8 / len(LATENCY)
    for i, (figure, label) in enumerate(LATENCY.items()):
        xs = [x + (i - (len(LATENCY) - 1) / 2) * width for x in range(len(docs))]
        bottom.bar(xs, [_value(d, figure) for d in docs], width, label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("ms from enqueue to task start (log scale)")
    bottom.set_title("Latency with idle workers: lower is better")
    bottom.set_xticks(range(len(docs)), names, rotation=20, ha="right")
    _bold_leek(bottom)
    bottom.legend(fontsize="small")
    bottom.grid(axis="y", which="both", alpha=0.3)

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
