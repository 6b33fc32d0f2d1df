#!/usr/bin/env python3
"""Turns the JSON files of one scripts/bench.sh run into Markdown tables (stdout) and
fanout.svg (CPU per delivered GB and latency against player count, both servers).
Standard library only."""

import re
import glob
import math
import json
import os
import sys


def load(out):
    runs = {}
    for path in glob.glob(os.path.join(out, "*.json")):
        with open(path) as f:
            data = json.load(f)
        runs[data["label"]] = data
    return runs


def fmt(value, digits=2):
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def servers_of(runs, prefix):
    """Server names in labels PREFIX-<n>-<server>, nginx first."""
    names = {k.split("-", 2)[2] for k in runs if k.startswith(prefix + "-")}
    return sorted(names, key=lambda n: (n != "nginx", n))


def fanout_table(runs, prefix="fanout"):
    counts = sorted({int(k.split("-")[1]) for k in runs if k.startswith(prefix + "-")})
    if not counts:
        return []
    if prefix == "fanout":
        title, latency = "### Fan-out: one 2.5 Mbit/s stream (+128 kbit/s audio) to N players", "latency p50 / p99 ms"
    else:
        title = "### Fan-out with FFmpeg publishing: `-re`, stream copy of a 2.5 Mbit/s H.264/AAC file"
        latency = "delay beyond the least p50 / p99 ms"
    lines = [
        title,
        "",
        f"| players | server | delivered Mbit/s (offered) | server CPU | CPU s per delivered GB | rtmpx / nginx | frames dropped | {latency} | load tool CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        nginx = runs.get(f"{prefix}-{n}-nginx")
        for server in servers_of(runs, prefix):
            r = runs.get(f"{prefix}-{n}-{server}")
            if not r:
                continue
            rel = ""
            if server != "nginx" and nginx:
                rel = fmt(ratio(r["server_cpu_secs_per_delivered_gb"], nginx["server_cpu_secs_per_delivered_gb"])) + "×"
            lines.append(
                f"| {n} ({r['players_connected']} connected) | {server} | {fmt(r['delivered_mbps'], 0)} ({fmt(r['expected_mbps'], 0)}) "
                f"| {fmt(r['server_cpu_pct'], 0)} % | {fmt(r['server_cpu_secs_per_delivered_gb'], 3)} | {rel} "
                f"| {r['frames_dropped']} | {fmt(r['latency_ms_p50'])} / {fmt(r['latency_ms_p99'])} | {fmt(r['tool_cpu_pct'], 0)} % |"
            )
    return lines + [""]


def idle_table(runs):
    rows = sorted(k for k in runs if k.startswith("idle-"))
    if not rows:
        return []
    lines = [
        "### Idle capacity: players of an unpublished stream",
        "",
        "| server | connected | RSS before → after (KiB) | KiB per idle player | rtmpx / nginx | handshakes/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_server = {k.split("-", 2)[2]: runs[k] for k in rows}
    nginx = by_server.get("nginx")
    for server, r in sorted(by_server.items()):
        rel = ""
        if server != "nginx" and nginx:
            rel = fmt(ratio(r["server_rss_per_player_kib"], nginx["server_rss_per_player_kib"])) + "×"
        lines.append(
            f"| {server} | {r['players_connected']} | {r['server_rss_before_kib']} → {r['server_rss_after_kib']} "
            f"| {fmt(r['server_rss_per_player_kib'])} | {rel} | {fmt(r['handshakes_per_sec'], 0)} |"
        )
    return lines + [""]


def ingest_table(runs):
    rows = sorted(k for k in runs if k.startswith("ingest-"))
    if not rows:
        return []
    lines = [
        "### Ingest: N publishers at 2.5 Mbit/s (+128 kbit/s audio), no players",
        "",
        "| server | publishers live | ingested Mbit/s | server CPU | CPU s per ingested GB | rtmpx / nginx | late frames (tool) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_server = {k.split("-", 2)[2]: runs[k] for k in rows}
    nginx = by_server.get("nginx")
    for server, r in sorted(by_server.items()):
        rel = ""
        if server != "nginx" and nginx:
            rel = fmt(ratio(r["server_cpu_secs_per_ingested_gb"], nginx["server_cpu_secs_per_ingested_gb"])) + "×"
        lines.append(
            f"| {server} | {r['publishers'] - r['publishers_failed']} | {fmt(r['ingested_mbps'], 0)} | {fmt(r['server_cpu_pct'], 0)} % "
            f"| {fmt(r['server_cpu_secs_per_ingested_gb'], 3)} | {rel} | {r['publisher_frames_late']} |"
        )
    return lines + [""]


def hot_table(runs):
    """hot-<players>-<server>-t<threads>: one stream on rtmpx with 1, 2... worker threads."""
    rows = sorted((k for k in runs if k.startswith("hot-")), key=lambda k: (k.rsplit("-t", 1)[0], int(k.rsplit("-t", 1)[1])))
    if not rows:
        return []
    lines = [
        "### Hot stream: one stream's players on every worker thread",
        "",
        "| players | server | --threads | delivered Mbit/s (offered) | server CPU | CPU s per delivered GB | × --threads 1 | worker threads' shares of their CPU | frames dropped | latency p50 / p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for k in rows:
        r = runs[k]
        server = k.split("-", 2)[2].rsplit("-t", 1)[0]
        one = runs.get(f"{k.rsplit('-t', 1)[0]}-t1")
        shares = sorted((t["worker_share"] for t in r.get("server_threads", []) if t.get("worker_share") is not None), reverse=True)
        rel = fmt(ratio(r["server_cpu_secs_per_delivered_gb"], one and one["server_cpu_secs_per_delivered_gb"])) + "×"
        lines.append(
            f"| {r['players_connected']} | {server} | {k.rsplit('-t', 1)[1]} | {fmt(r['delivered_mbps'], 0)} ({fmt(r['expected_mbps'], 0)}) "
            f"| {fmt(r['server_cpu_pct'], 0)} % | {fmt(r['server_cpu_secs_per_delivered_gb'], 3)} | {rel} "
            f"| {' / '.join(f'{s * 100:.0f} %' for s in shares)} | {r['frames_dropped']} "
            f"| {fmt(r['latency_ms_p50'])} / {fmt(r['latency_ms_p99'])} |"
        )
    return lines + [""]


def variant_runs(runs, v):
    """The runs of variant `v`: `variant-v` or its repetitions `variant-v-rN`."""
    return [r for k, r in runs.items() if k == f"variant-{v}" or k.startswith(f"variant-{v}-r")]


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def variant_table(runs):
    names = [k for k in runs if k.startswith("variant-") or k.startswith("handshakes-")]
    if not names:
        return []
    variants = []
    for k in names:
        # variant-<v>[-rN] and handshakes-<v>; <v> may hold a dash (http-flv, ws-flv).
        v = re.sub(r"-r\d+$", "", k.split("-", 1)[1])
        if v not in variants:
            variants.append(v)
    order = ["rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte", "http-flv", "ws-flv"]
    variants.sort(key=lambda v: order.index(v) if v in order else 99)
    cpu = {v: median(r.get("server_cpu_secs_per_delivered_gb") for r in variant_runs(runs, v)) for v in variants}
    base = cpu.get("rtmp")
    lines = [
        "### Per-variant cost on rtmpx (publisher on plain RTMP, players on the variant)",
        "",
        "Medians over the repetitions (all of them in brackets).",
        "",
        "| variant | players | delivered Mbit/s | CPU s per delivered GB | × plain RTMP | latency p50 / p99 ms | handshakes/s | server CPU ms per handshake |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        rs = variant_runs(runs, v)
        h = runs.get(f"handshakes-{v}") or {}
        each = ", ".join(fmt(r.get("server_cpu_secs_per_delivered_gb"), 3) for r in rs)
        rel = ratio(cpu.get(v), base)
        lines.append(
            f"| {v} | {fmt(median(r.get('players_connected') for r in rs), 0)} "
            f"| {fmt(median(r.get('delivered_mbps') for r in rs), 0)} "
            f"| {fmt(cpu.get(v), 3)} ({each}) | {fmt(rel)}× "
            f"| {fmt(median(r.get('latency_ms_p50') for r in rs))} / {fmt(median(r.get('latency_ms_p99') for r in rs))} "
            f"| {fmt(h.get('handshakes_per_sec'), 0)} | {fmt(h.get('server_cpu_ms_per_connection'), 2)} |"
        )
    return lines + [""]


def svg_plot(runs, path):
    counts = sorted({int(k.split("-")[1]) for k in runs if k.startswith("fanout-")})
    if not counts:
        return False
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(servers_of(runs, "fanout"))}
    panels = [
        ("server CPU s per delivered GB", lambda r: r.get("server_cpu_secs_per_delivered_gb"), None, False),
        ("latency p50 (dashed) / p99 (solid), ms, log scale", lambda r: r.get("latency_ms_p99"),
         lambda r: r.get("latency_ms_p50"), True),
    ]
    width, height, pad = 420, 300, 55
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 30}" font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>']
    for index, (title, main, extra, log) in enumerate(panels):
        x0 = index * width
        values = []
        for server in colors:
            for n in counts:
                r = runs.get(f"fanout-{n}-{server}")
                if r:
                    for f in (main, extra):
                        if f and f(r) is not None:
                            values.append(f(r))
        top = max(values) * 1.15 if values else 1
        bottom = 0.0
        if log:
            positive = [v for v in values if v > 0] or [1.0]
            bottom = math.floor(math.log10(min(positive)))
            top = math.ceil(math.log10(max(positive)))
            if top == bottom:
                top += 1

        def px(i):
            return x0 + pad + (width - pad - 20) * (i / max(1, len(counts) - 1))

        def py(v):
            if log:
                v = math.log10(max(v, 10 ** bottom))
            return 20 + (height - pad) * (1 - (v - bottom) / (top - bottom))
        parts.append(f'<text x="{x0 + width / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>')
        axis = height - pad + 20
        parts.append(f'<line x1="{x0 + pad}" y1="{axis}" x2="{x0 + width - 20}" y2="{axis}" stroke="black"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="20" x2="{x0 + pad}" y2="{axis}" stroke="black"/>')
        ticks = [10 ** e for e in range(int(bottom), int(top) + 1)] if log else [top * k / 4 for k in range(5)]
        for v in ticks:
            parts.append(f'<text x="{x0 + pad - 4}" y="{py(v) + 4}" text-anchor="end">{v:.3g}</text>')
            parts.append(f'<line x1="{x0 + pad}" y1="{py(v)}" x2="{x0 + width - 20}" y2="{py(v)}" stroke="#ddd"/>')
        for i, n in enumerate(counts):
            parts.append(f'<text x="{px(i)}" y="{axis + 15}" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{x0 + width / 2}" y="{height + 10}" text-anchor="middle">players</text>')
        for server, color in colors.items():
            for f, dash in ((main, ""), (extra, ' stroke-dasharray="4,3"')):
                if not f:
                    continue
                points = []
                for i, n in enumerate(counts):
                    r = runs.get(f"fanout-{n}-{server}")
                    if r and f(r) is not None:
                        points.append((px(i), py(f(r))))
                if points:
                    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="'
                                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
                    for x, y in points:
                        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        for j, (server, color) in enumerate(colors.items()):
            parts.append(f'<rect x="{x0 + pad + 10}" y="{28 + 14 * j}" width="10" height="10" fill="{color}"/>')
            parts.append(f'<text x="{x0 + pad + 25}" y="{37 + 14 * j}">{server}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    return True


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = load(out)
    lines = []
    machine = os.path.join(out, "machine.txt")
    if os.path.exists(machine):
        with open(machine) as f:
            lines += ["```", f.read().rstrip(), "```", ""]
    ffmpeg_table = lambda runs: fanout_table(runs, "ffpub")  # noqa: E731
    for table in (fanout_table, ffmpeg_table, hot_table, idle_table, ingest_table, variant_table):
        lines += table(runs)
    errors = [(k, r["errors"], r.get("first_error")) for k, r in sorted(runs.items()) if r.get("errors")]
    if errors:
        lines += ["Errors:", ""] + [f"- {k}: {n} (first: {e})" for k, n, e in errors] + [""]
    if svg_plot(runs, os.path.join(out, "fanout.svg")):
        lines += ["![fan-out: CPU per GB and latency against players](fanout.svg)", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
