#!/usr/bin/env python3
"""What starting a plugin costs on this machine, before it does anything: /bin/true, an empty
Rust program (fn main(){}, built here with rustc -O, the floor for any Rust plugin) and
prefixd-cni answering VERSION (no socket). Interleaved, p50 of RUNS each.
Usage: scripts/exec-floor.py [PREFIXD_CNI] [RUNS]"""
import os
import subprocess
import sys
import tempfile
import time

cni = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/prefixd-target/release/prefixd-cni")
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
tmp = tempfile.mkdtemp()
src = os.path.join(tmp, "empty.rs")
with open(src, "w") as f:
    f.write("fn main() {}\n")
empty = os.path.join(tmp, "empty")
subprocess.run(["rustc", "-O", src, "-o", empty], check=True)

cases = [("/bin/true", [["/bin/true"], {}]),
         ("empty Rust program", [[empty], {}]),
         ("prefixd-cni VERSION", [[cni], {"CNI_COMMAND": "VERSION"}])]
times = {name: [] for name, _ in cases}
for _ in range(runs):
    for name, (cmd, env) in cases:
        t = time.perf_counter()
        subprocess.run(cmd, env=env, input=b'{"cniVersion":"1.0.0"}', capture_output=True)
        times[name].append(time.perf_counter() - t)
for name, _ in cases:
    v = sorted(times[name])
    print(f"{name:22} p50 {v[len(v) // 2] * 1000:.2f} ms  p99 {v[int(len(v) * 0.99)] * 1000:.2f} ms")
