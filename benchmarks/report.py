"""Medians, ratios, the stdout table, the targets check and the PNG chart."""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.catalog import CLIENTS, TARGETS, WORKLOADS

Row = Dict[str, Any]
_METRICS = ("rps", "p50_ms", "p99_ms", "cpu_per_1k", "peak_rss_mb", "mean_ms")


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def summarize(runs: List[Row]) -> List[Row]:
    """One row per (client, workload, C): medians over repetitions, then ratios."""
    groups: Dict[Tuple[str, str, int], List[Row]] = {}
    for r in runs:
        groups.setdefault((r["client"], r["workload"], r["concurrency"]), []).append(r)
    rows: List[Row] = []
    for (client, workload, c), reps in groups.items():
        ok = [r for r in reps if r.get("status") == "ok"]
        row: Row = {"client": client, "workload": workload, "concurrency": c,
                    "reps": len(ok), "runs": len(reps)}
        if ok:
            row["status"] = "ok"
            for m in _METRICS:
                row[m] = _median([r.get(m) for r in ok])
            row["rps_all"] = [round(r["rps"], 1) for r in ok]
            row["note"] = ok[0].get("note", "")
        else:
            row["status"] = reps[0].get("status", "error")
            row["error"] = reps[0].get("error", "")
        rows.append(row)
    index = {(r["client"], r["workload"], r["concurrency"]): r for r in rows}
    for row in rows:
        ref_name = CLIENTS[row["client"]].reference
        row["reference"] = ref_name
        ref = index.get((ref_name, row["workload"], row["concurrency"]))
        if ref is not None and ref.get("rps") and row.get("rps"):
            row["ratio"] = ref["rps"] / row["rps"]
    order = {name: i for i, name in enumerate(CLIENTS)}
    worder = {name: i for i, name in enumerate(WORKLOADS)}
    rows.sort(key=lambda r: (worder.get(r["workload"], 99), r["concurrency"],
                             order.get(r["client"], 99)))
    return rows


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short(ref: str) -> str:
    return ref.replace("greenpool-", "gp-")


def table(rows: List[Row]) -> str:
    head = ("client", "workload", "C", "req/s", "gp/x", "vs", "p50 ms", "p99 ms",
            "CPU s/1k", "RSS MiB", "note")
    lines = []
    widths = (20, 10, 4, 9, 6, 14, 8, 8, 8, 7, 0)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths)):
            out.append(cell.ljust(w) if i in (0, 1, 5) else cell.rjust(w) if w else cell)
        return "  ".join(out).rstrip()

    lines.append(line(head))
    lines.append("-" * 120)
    last = None
    for r in rows:
        cell = (r["workload"], r["concurrency"])
        if last is not None and cell != last:
            lines.append("")
        last = cell
        if r.get("status") == "ok":
            p50 = r.get("p50_ms")
            note = r.get("note", "")
            if p50 is None and r.get("mean_ms") is not None:
                note = ("mean %.2f ms; " % r["mean_ms"]) + note
            cells = (r["client"], r["workload"], str(r["concurrency"]), _fmt(r.get("rps"), ",.0f"),
                     _fmt(r.get("ratio"), ".2f"), _short(r["reference"]), _fmt(p50, ".2f"),
                     _fmt(r.get("p99_ms"), ".2f"), _fmt(r.get("cpu_per_1k"), ".3f"),
                     _fmt(r.get("peak_rss_mb"), ".0f"), note)
        else:
            cells = (r["client"], r["workload"], str(r["concurrency"]), "-", "-", "", "-", "-",
                     "-", "-", "%s: %s" % (r.get("status"), (r.get("error") or "")[:90]))
        lines.append(line(cells))
    return "\n".join(lines)


def targets(rows: List[Row]) -> List[Row]:
    index = {(r["client"], r["workload"], r["concurrency"]): r for r in rows}
    out = []
    for label, gp, peer, workload, c, minimum in TARGETS:
        a, b = index.get((gp, workload, c)), index.get((peer, workload, c))
        t: Row = {"target": label, "minimum": minimum}
        if a is None or b is None:
            t["verdict"] = "not run"
        elif not a.get("rps"):
            t["verdict"] = "greenpool unavailable"
        elif not b.get("rps"):
            t["verdict"] = "peer unavailable"
        else:
            t["ratio"] = a["rps"] / b["rps"]
            t["verdict"] = "met" if t["ratio"] >= minimum else "NOT met"
        out.append(t)
    return out


def targets_text(ts: List[Row], micro: Optional[Dict[str, Any]]) -> str:
    lines = ["Targets (issues 6, 18 and 19):"]
    for t in ts:
        ratio = " %.2fx" % t["ratio"] if "ratio" in t else ""
        lines.append("  %-44s %s%s" % (t["target"], t["verdict"], ratio))
    if micro:
        u = micro.get("uncontended", {}).get("us_per_pair")
        m = micro.get("idle_memory", {}).get("kib_per_connection")
        if u is not None:
            lines.append("  %-44s %s %.2f us" % ("checkout+checkin <= 5 us",
                                                 "met" if u <= 5 else "NOT met", u))
        if m is not None:
            lines.append("  %-44s %s %.1f KiB" % ("idle pooled connection <= 16 KiB RSS",
                                                  "met" if m <= 16 else "NOT met", m))
    return "\n".join(lines)


def micro_text(micro: Dict[str, Any]) -> str:
    if not micro:
        return ""
    if "error" in micro:
        return "Pool micro-benchmarks: error: %s" % micro["error"]
    lines = ["Pool micro-benchmarks (greenpool/pool.py, no protocol):"]
    u = micro.get("uncontended")
    if u:
        lines.append("  uncontended checkout+checkin      %.2f us/pair  (median of %d runs of %d; "
                     "best %.2f)" % (u["us_per_pair"], u["runs"], u["n"], u["best_us"]))
        if u.get("baseline_us") is not None:
            lines.append("    baseline Semaphore+deque        %.2f us/pair" % u["baseline_us"])
    c = micro.get("contended")
    if c:
        lines.append("  %d greenlets / %d connections    %s checkouts/s, fairness max/min %s "
                     "(min %d, max %d, mean %.1f), %d timeouts" % (
                         c["greenlets"], c["connections"], format(c["per_second"], ",.0f"),
                         "%.2f" % c["fairness"] if c["fairness"] is not None else "inf",
                         c["min"], c["max"], c["mean"], c["timeouts"]))
    m = micro.get("idle_memory")
    if m:
        lines.append("  idle pooled connection            %.1f KiB RSS each (%d connections, "
                     "+%.1f MiB)" % (m["kib_per_connection"], m["connections"], m["rss_delta_mb"]))
    return "\n".join(lines)


def chart(rows: List[Row], path: str, title: str) -> Optional[str]:
    """Horizontal bars of req/s (log scale), one panel per workload, one bar per client and C."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return "matplotlib not installed: %s" % e
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in rows)]
    if not workloads:
        return "nothing to plot"
    heights = []
    for w in workloads:
        heights.append(max(1, len({r["client"] for r in rows if r["workload"] == w})))
    fig, axes = plt.subplots(len(workloads), 1, figsize=(11, 1.2 + sum(heights) * 0.42),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    colors = {1: "#9ecae1", 50: "#2171b5", 500: "#08306b"}
    rates = [r["rps"] for r in rows if r.get("rps")]
    lo = 10 ** math.floor(math.log10(min(rates) / 2)) if rates else 1
    hi = max(rates) * 4 if rates else 10
    for ax, w in zip(axes[:, 0], workloads):
        wrows = [r for r in rows if r["workload"] == w]
        clients = [c for c in CLIENTS if any(r["client"] == c for r in wrows)]
        cs = sorted({r["concurrency"] for r in wrows})
        bar_h = 0.8 / len(cs)
        for j, c in enumerate(cs):
            ys, xs = [], []
            for i, name in enumerate(clients):
                r = next((r for r in wrows if r["client"] == name and r["concurrency"] == c), None)
                y = i + (j - (len(cs) - 1) / 2) * bar_h
                if r is not None and r.get("rps"):
                    ys.append(y)
                    xs.append(r["rps"])
                    ax.text(r["rps"] * 1.05, y, format(r["rps"], ",.0f"), va="center", fontsize=7)
                elif r is not None and j == 0:
                    ax.text(lo * 1.1, i, r.get("status", "?"), va="center", fontsize=7, color="#a00")
            ax.barh(ys, xs, height=bar_h, color=colors.get(c, "#6baed6"), label="C=%d" % c)
        ax.set_yticks(range(len(clients)))
        ax.set_yticklabels(clients, fontsize=8)
        for label in ax.get_yticklabels():
            if label.get_text().startswith("greenpool"):
                label.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_title("%s — %s" % (w, WORKLOADS[w].about), fontsize=9, loc="left")
        ax.grid(axis="x", which="major", alpha=0.3)
        if len(cs) > 1 or ax is axes[0, 0]:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("requests per second (log scale; higher is better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
