#!/usr/bin/env python3
"""The physical floor of a one-core fan-out on this machine, whatever the server.

Writes one message of SIZE bytes to each of N loopback TCP connections, one send per
connection, from one process pinned to one CPU, while another process pinned to another CPU
reads them all (as the load tool does). Prints how long a whole pass takes and when the median
connection got its copy: no single-core server that writes each message to each player can
deliver faster. Usage: loopback_floor.py [N] [SIZE ...]
"""
import os
import select
import socket
import statistics
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
SIZES = [int(s) for s in sys.argv[2:]] or [10_965, 87_719]
PASSES = 30
WRITER_CPU, READER_CPU = 0, 1

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
ready_r, ready_w = os.pipe()

pid = os.fork()
if pid == 0:
    # Reader: connects N sockets and drains them with epoll until the writer closes them.
    os.sched_setaffinity(0, {READER_CPU})
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(N)]
    os.write(ready_w, b"x")
    ep = select.epoll()
    for c in conns:
        c.setblocking(False)
        ep.register(c.fileno(), select.EPOLLIN)
    by_fd = {c.fileno(): c for c in conns}
    open_count = N
    while open_count:
        for fd, _ in ep.poll():
            try:
                data = by_fd[fd].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                open_count -= 1
    os._exit(0)

os.sched_setaffinity(0, {WRITER_CPU})
os.read(ready_r, 1)
socks = []
for _ in range(N):
    s, _ = listener.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    socks.append(s)
for size in SIZES:
    payload = b"\x5a" * size
    passes, medians = [], []
    before = os.times()
    for _ in range(PASSES):
        start = time.perf_counter()
        stamps = []
        for s in socks:
            s.sendall(payload)
            stamps.append(time.perf_counter() - start)
        passes.append(stamps[-1] * 1e3)
        medians.append(stamps[N // 2] * 1e3)
        time.sleep(0.1)
    after = os.times()
    # Kernel time alone: what any server pays for these sends, however lean its own code.
    kernel_us = (after.system - before.system) * 1e6 / (PASSES * N)
    print(
        f"{N} connections x {size} B: whole pass {statistics.median(passes):.1f} ms "
        f"(min {min(passes):.1f}), median connection served after {statistics.median(medians):.1f} ms "
        f"(min {min(medians):.1f}); kernel CPU {kernel_us:.1f} us per send, "
        f"{kernel_us * 1e3 / size:.2f} s per GB"
    )
for s in socks:
    s.close()
os.waitpid(pid, 0)
