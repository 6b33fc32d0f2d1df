#!/usr/bin/python3
"""Cluster benchmarks (BENCHMARKS.md, "Cluster"): redis-server and three rtmpx nodes on loopback.

1. Publish -> playable on every node: rtmpx-bench publishes on node A; as soon as A lists the
   stream, a librtmp player on each node asks for it; the time until each has media (2 kB past
   the FLV header: metadata and the first frames). Local (A) for comparison.
2. CPU of a cross-node pull: one player on B of a stream published on A (B pulls it), and the
   same player on A directly; server CPU (utime+stime) per GB the pull (or the player) received.

Usage: /usr/bin/python3 scripts/cluster_bench.py [--rtmpx target/release/rtmpx]
       [--bench target/release/rtmpx-bench] [--rounds 5] [--bitrate 20M] [--seconds 20]
Needs redis-server and python3-librtmp (Debian).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import librtmp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return json.load(reply)


class Node:
    def __init__(self, binary, index, redis_port, workdir):
        self.port, self.admin = free_port(), free_port()
        config = f"""
[server]
worker_threads = 1
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:{self.port}"
[[app]]
name = "live"
[cluster]
redis = "redis://127.0.0.1:{redis_port}/0"
node = "rtmp://127.0.0.1:{self.port}"
heartbeat_ms = 1000
ttl_ms = 3000
linger_secs = 1
[admin]
addr = "127.0.0.1:{self.admin}"
"""
        path = os.path.join(workdir, f"node{index}.toml")
        open(path, "w").write(config)
        self.log = open(os.path.join(workdir, f"node{index}.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", path], stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while True:
            try:
                get_json(self.admin, "/api/v1/streams")
                break
            except OSError:
                assert time.time() < deadline, "node did not start"
                time.sleep(0.1)

    def url(self, stream):
        return f"rtmp://127.0.0.1:{self.port}/live/{stream}"

    def streams(self):
        return [s["stream"] for s in get_json(self.admin, "/api/v1/streams") if s.get("publisher")]


def time_to_media(url, since, results, key):
    conn = librtmp.RTMP(url, live=True, timeout=10)
    conn.connect()
    stream = conn.create_stream()
    got = 0
    while got < 2048 + 13:
        data = stream.read(4096)
        if not data:
            break
        got += len(data)
    results[key] = time.monotonic() - since if got >= 2048 + 13 else None
    conn.close()


def playable(nodes, bench, rounds):
    origin, remote = nodes[0], nodes[1:]
    rows = []
    for i in range(rounds):
        name = f"p{i}"
        publisher = subprocess.Popen(
            [bench, "--url", origin.url(name), "--players", "0", "--duration", "6", "--warmup", "0", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while name not in origin.streams():
            time.sleep(0.005)
        since, results = time.monotonic(), {}
        threads = [threading.Thread(target=time_to_media, args=(n.url(name), since, results, j))
                   for j, n in enumerate(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        publisher.wait()
        rows.append(results)
        print(f"round {i}: local {results.get(0)}, remote {[results.get(j) for j in range(1, len(nodes))]}")
        time.sleep(2)
    local = [r[0] for r in rows]
    every = [max(r[j] for j in range(1, len(nodes))) for r in rows]
    return {"local_ms": [round(x * 1000) for x in local], "every_node_ms": [round(x * 1000) for x in every],
            "local_median_ms": round(statistics.median(local) * 1000),
            "every_node_median_ms": round(statistics.median(every) * 1000)}


def pull_cost(nodes, bench, bitrate, seconds, cross):
    origin, edge = nodes[0], nodes[1]
    name = f"cost-{'cross' if cross else 'local'}"
    player = edge if cross else origin
    before = (cpu_seconds(origin.proc.pid), cpu_seconds(edge.proc.pid))
    out = tempfile.mktemp(suffix=".json")
    subprocess.run([bench, "--url", origin.url(name), "--play-url", player.url(name), "--players", "1",
                    "--bitrate", bitrate, "--duration", str(seconds), "--warmup", "2", "--quiet",
                    "--json", out], check=True, stdout=subprocess.DEVNULL)
    after = (cpu_seconds(origin.proc.pid), cpu_seconds(edge.proc.pid))
    result = json.load(open(out))
    pulled = sum(r["bytes"] for r in get_json(edge.admin, "/api/v1/relays")) if cross else None
    return {"origin_cpu_s": round(after[0] - before[0], 3), "edge_cpu_s": round(after[1] - before[1], 3),
            "pull_bytes": pulled, "bench": {k: result.get(k) for k in ("players_connected", "delivered_bytes", "delivered_mbps",
                                                                      "latency_ms_p50", "latency_ms_p99",
                                                                      "frames_dropped")}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rtmpx", default="target/release/rtmpx")
    parser.add_argument("--bench", default="target/release/rtmpx-bench")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bitrate", default="20M")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="rtmpx-cluster-bench-")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    nodes = [Node(args.rtmpx, i, redis_port, workdir) for i in range(3)]
    try:
        report = {"playable": playable(nodes, args.bench, args.rounds)}
        time.sleep(3)
        report["pull_cross_node"] = pull_cost(nodes, args.bench, args.bitrate, args.seconds, True)
        time.sleep(3)
        report["player_on_origin"] = pull_cost(nodes, args.bench, args.bitrate, args.seconds, False)
        json.dump(report, sys.stdout, indent=1)
        print(f"\nlogs in {workdir}")
    finally:
        for node in nodes:
            node.proc.terminate()
        redis.terminate()


if __name__ == "__main__":
    main()
