#!/usr/bin/env python3
"""Checks that the declared minimum Rust (Cargo.toml's `rust-version`) and the Dockerfile's
`FROM rust:X` are at least what every package in Cargo.lock declares as its `rust-version`
(from `cargo metadata --locked`), so `cargo build --locked` works on both.

Exit status 1 names the packages that need more and the values to set. Run by scripts/test.sh.
"""
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def version(text):
    """'1.88' or '1.88.0' -> (1, 88, 0)."""
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def shown(v):
    return ".".join(map(str, v[:2] if v[2] == 0 else v))


def main():
    manifest = (ROOT / "Cargo.toml").read_text()
    declared = re.search(r'^rust-version\s*=\s*"([0-9.]+)"', manifest, re.M)
    if not declared:
        sys.exit("check_msrv: no rust-version in Cargo.toml")
    declared = version(declared.group(1))

    images = re.findall(r"^FROM\s+rust:([0-9.]+)", (ROOT / "Dockerfile").read_text(), re.M)
    if not images:
        sys.exit("check_msrv: the Dockerfile has no FROM rust:X line")

    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    locked = {node["id"] for node in metadata["resolve"]["nodes"]}
    needs = sorted(
        ((version(p["rust_version"]), f'{p["name"]} {p["version"]}')
         for p in metadata["packages"] if p["id"] in locked and p.get("rust_version")),
        reverse=True)
    floor = needs[0][0] if needs else (1, 0, 0)

    problems = []
    for what, have in [("Cargo.toml rust-version", declared)] + [
            (f"Dockerfile FROM rust:{image}", version(image)) for image in images]:
        if have < floor:
            newer = [name for need, name in needs if need > have]
            problems.append(f"{what} is {shown(have)}, but {', '.join(newer)} need(s) up to {shown(floor)}")
    if problems:
        print("check_msrv: the locked dependencies need a newer Rust:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print(f"  set rust-version = \"{shown(floor)}\" and FROM rust:{shown(floor)}-bookworm", file=sys.stderr)
        return 1
    print(f"check_msrv: rust-version {shown(declared)}, Dockerfile rust:{', '.join(images)}; "
          f"the locked dependencies need {shown(floor)} ({needs[0][1] if needs else 'nothing'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
