#!/usr/bin/env python3
"""Builds the committed seed corpus in fuzz/seeds/<target>/ from real client sessions.

Sources: crates/rtmpx-core/tests/fixtures/*.bin (ffmpeg, rtmpdump and python3-librtmp
client->server bytes, see its README), fuzz/seeds/captures/rtmpdump_rtmpe_c0c1.bin (rtmpdump's
RTMPE C0+C1, recorded by a listener that answered nothing), and the config files.
Run from the repository root: python3 fuzz/make_seeds.py
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
HANDSHAKE = 1 + 1536 + 1536


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def messages(data):
    """(type, stream id, payload) of the whole messages in a client chunk stream."""
    pos, chunk, streams, out = 0, 128, {}, []
    while pos < len(data):
        b = data[pos]
        fmt, csid = b >> 6, b & 0x3F
        pos += 1
        if csid == 0:
            csid, pos = 64 + data[pos], pos + 1
        elif csid == 1:
            csid, pos = 64 + data[pos] + data[pos + 1] * 256, pos + 2
        st = streams.setdefault(csid, {"len": 0, "type": 0, "sid": 0, "buf": b""})
        if fmt <= 2:
            pos += 3
        if fmt <= 1:
            st["len"], st["type"] = int.from_bytes(data[pos:pos + 3], "big"), data[pos + 3]
            pos += 4
        if fmt == 0:
            st["sid"] = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        n = min(chunk, st["len"] - len(st["buf"]))
        if pos + n > len(data):
            break
        st["buf"] += data[pos:pos + n]
        pos += n
        if len(st["buf"]) == st["len"]:
            out.append((st["type"], st["sid"], st["buf"]))
            if st["type"] == 1:
                chunk = int.from_bytes(st["buf"][:4], "big") & 0x7FFFFFFF
            st["buf"] = b""
    return out


def chunked(msgs, chunk=4096):
    """Messages as type-0 chunks, after a Set Chunk Size."""
    out = bytearray()
    for i, (typ, sid, payload) in enumerate([(1, 0, chunk.to_bytes(4, "big"))] + msgs):
        csid = 2 if typ in (1, 2, 3, 5, 6) else 3 if typ in (17, 20) else 4 if typ == 8 else 6 if typ == 9 else 5
        out += bytes([csid]) + (0).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
        out += bytes([typ]) + sid.to_bytes(4, "little")
        for j in range(0, len(payload), chunk):
            if j:
                out += bytes([0xC0 | csid])
            out += payload[j:j + chunk]
    return bytes(out)


for path in sorted(glob.glob(os.path.join(ROOT, "crates/rtmpx-core/tests/fixtures/*.bin"))):
    name = os.path.splitext(os.path.basename(path))[0]
    data = open(path, "rb").read()
    write("handshake", name + "_whole", b"\xff" + data[:HANDSHAKE])
    write("handshake", name + "_bytewise", b"\x01" + data[:HANDSHAKE])
    body = data[HANDSHAKE:]
    write("chunk_decoder", name, body[:8192])
    write("server_session", name + "_raw", body[:8192])
    msgs = messages(body)
    for i, (typ, _, payload) in enumerate(msgs):
        if typ in (18, 20) and len(payload) < 4096:
            write("amf", f"{name}_{i}_type{typ}", payload)
    # What follows connect, so the fuzzer starts inside the command state machine.
    after_connect = [m for m in msgs if m[0] != 1][1:]
    small = [m for m in after_connect if len(m[2]) <= 2048][:24]
    write("server_session", name + "_after_connect", chunked(small))

# RTMPT: open, send the client's handshake and first commands in two requests, idle, close
# (operation bytes as rtmpx::fuzzing::rtmpt_requests reads them).
def send_op(body):
    return bytes([1]) + len(body).to_bytes(2, "big") + body

for path in sorted(glob.glob(os.path.join(ROOT, "crates/rtmpx-core/tests/fixtures/*.bin"))):
    name = os.path.splitext(os.path.basename(path))[0]
    data = open(path, "rb").read()
    ops = bytes([0]) + send_op(data[:1537]) + bytes([2]) + send_op(data[1537:HANDSHAKE + 1500]) + bytes([2, 2, 3])
    write("rtmpt_requests", name, ops)
write("rtmpt_requests", "guesses", bytes([0, 5]) + bytes(range(16)) + bytes([4, 11]) + b"fcs/ident2_" + bytes([2 + 12, 3]))

rtmpe = open(os.path.join(SEEDS, "captures", "rtmpdump_rtmpe_c0c1.bin"), "rb").read()
write("handshake", "rtmpdump_rtmpe_c0c1", b"\xff" + rtmpe)
write("handshake", "rtmpdump_rtmpe8_c0c1", b"\xff" + bytes([8]) + rtmpe[1:])
write("handshake", "rtmpdump_rtmpe9_c0c1", b"\xff" + bytes([9]) + rtmpe[1:])

for cfg in ("default.toml", "rtmpx.toml"):
    write("config", cfg, open(os.path.join(ROOT, "config", cfg), "rb").read())
write("config", "auth.toml", b"""[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"
[[app]]
name = "live"
publish_keys = ["k1"]
play_keys = ["v1"]
allow_publish = ["10.0.0.0/8", "::1"]
deny_play = ["192.168.0.0/16"]
on_connect = "http://127.0.0.1:8080/c"
on_publish = "http://127.0.0.1:8080/p"
on_done = "http://127.0.0.1:8080/d"
callback_timeout_ms = 1000
max_publishers = 3
[app.token]
secret = "0123456789abcdef"
play = false
max_ttl_secs = 600
[limits]
max_players_per_stream = 5
""")

for i, text in enumerate([
    "cam1?expires=1700000000&token=50923175584741ab970734451581087447e891e99d7f4a6207f1ecec6c4dbb00",
    "cam?key=k1&user=a%20b+c",
    "10.0.0.0/8",
    "2001:db8::/32",
    "::ffff:127.0.0.1",
    "/live/?x=%zz&&=&y",
]):
    write("stream_query", f"q{i}", text.encode())
print("seeds written to", SEEDS)
