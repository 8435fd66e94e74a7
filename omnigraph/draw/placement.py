"""A plan's placement: the target's devices as lanes (grouped by node), each stage a column,
its instances drawn on the devices they hold (a tp/ep group as one block over its devices,
labelled with its replica), the stages' edges over the columns (dashed: stream), and per device
a bar of its memory: weights, KV pool, arena, what is left free."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigraph.draw.figures import PALETTE, pyplot, save

GIB = 1 << 30
_MEMORY = (("weights", "#4e79a7"), ("kv", "#f28e2b"), ("arena", "#59a14f"), ("buffers", "#b07aa1"))


def draw_placement(report: dict[str, Any], devices: list[tuple[str, float]], edges: list[tuple[str, str, bool]],
                   path: str | Path) -> Path:
    """`report`: placement_report's dict; `devices`: (node:device, memory GiB) in target order;
    `edges`: (producer, consumer, stream) between stages."""
    plt = pyplot()
    rows = report["stages"]
    names = [d for d, _ in devices]
    lane = {d: i for i, d in enumerate(names)}
    fig, (grid, mem) = plt.subplots(1, 2, figsize=(3 + 1.6 * len(rows) + 4, 1.8 + 0.42 * len(names)),
                                    gridspec_kw={"width_ratios": [max(2, len(rows)), 2.2]}, sharey=True)
    used: dict[str, dict[str, float]] = {d: {} for d in names}
    for col, row in enumerate(rows):
        colour = PALETTE[col % len(PALETTE)]
        group = max(1, len(row["devices"]) // max(1, row["replicas"]))
        for rep in range(row["replicas"]):
            held = [d for d in row["devices"][rep * group:(rep + 1) * group] if d in lane]
            if not held:
                continue
            for d in held:
                for key, _ in _MEMORY:
                    used[d][key] = used[d].get(key, 0.0) + row["memory"].get(key, 0) / GIB
            ys = sorted(lane[d] for d in held)
            grid.add_patch(plt.Rectangle((col - 0.4, ys[0] - 0.4), 0.8, ys[-1] - ys[0] + 0.8, facecolor=colour,
                                         alpha=0.85, edgecolor="black", linewidth=0.6))
            par = "·".join(f"{k}{row[k]}" for k in ("tp", "ep", "pp") if row[k] > 1)
            grid.text(col, (ys[0] + ys[-1]) / 2, f"r{rep}" + (f"\n{par}" if par else ""), ha="center", va="center",
                      fontsize=7, color="white")
    for src, dst, stream in edges:
        cols = [i for i, r in enumerate(rows) if r["stage"] in (src, dst)]
        if len(cols) != 2:
            continue
        a = next(i for i, r in enumerate(rows) if r["stage"] == src)
        b = next(i for i, r in enumerate(rows) if r["stage"] == dst)
        grid.annotate("", xy=(b, -0.9), xytext=(a, -0.9), annotation_clip=False,
                      arrowprops={"arrowstyle": "->", "linestyle": "--" if stream else "-",
                                  "connectionstyle": "arc3,rad=-0.3", "color": "#555555"})
    grid.set_xlim(-0.6, len(rows) - 0.4)
    grid.set_ylim(len(names) - 0.5, -1.6)
    grid.set_xticks(range(len(rows)), [f"{r['stage']}\n{r['config']}\n{r.get('dtype') or ''}" for r in rows],
                    fontsize=8)
    grid.xaxis.tick_top()
    grid.set_yticks(range(len(names)), names, fontsize=8)
    grid.grid(alpha=0.2)
    grid.set_title(f"{report['pipeline']} on {report.get('target')}: {report.get('throughput_rps', 0):.3g} req/s, "
                   f"bottleneck {report.get('bottleneck')}", fontsize=9, pad=40)
    for d, capacity in devices:
        left = 0.0
        for key, colour in _MEMORY:
            width = used[d].get(key, 0.0)
            if width:
                mem.barh(lane[d], width, left=left, color=colour, height=0.7)
                left += width
        mem.barh(lane[d], max(0.0, capacity - left), left=left, color="#e0e0e0", height=0.7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in _MEMORY] + [plt.Rectangle((0, 0), 1, 1, color="#e0e0e0")]
    mem.legend(handles, [k for k, _ in _MEMORY] + ["free"], fontsize=7, loc="lower right")
    mem.set_xlabel("GiB per device")
    return save(fig, path)
