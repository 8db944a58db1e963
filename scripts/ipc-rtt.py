#!/usr/bin/env python3
"""Agent-side cost of one ADD and one DEL: the plugin's socket protocol spoken directly (no
process start), against a running agent. Usage: scripts/ipc-rtt.py SOCKET [RUNS]"""
import json
import socket
import sys
import time


def call(path, op):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps(op) + "\n").encode())
    # No half-close: the agent takes a closed end as a caller that went away (as prefixd-cni
    # does, the connection stays open until the answer has been read).
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return json.loads(out)


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    key = {"network": "rtt", "container_id": "rtt1", "ifname": "eth0"}
    adds, dels = [], []
    for _ in range(runs):
        t = time.perf_counter()
        r = call(path, {"v": 1, "op": "add", "key": key, "timeout_ms": 5000})
        adds.append(time.perf_counter() - t)
        assert "address" in r, r
        t = time.perf_counter()
        call(path, {"v": 1, "op": "del", "key": key})
        dels.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(runs):
        call(path, {"v": 1, "op": "status"})
    status = (time.perf_counter() - t) / runs
    adds.sort()
    dels.sort()
    print(f"ADD p50 {adds[runs // 2] * 1000:.3f} ms, DEL p50 {dels[runs // 2] * 1000:.3f} ms, "
          f"STATUS (no checkpoint write) {status * 1000:.3f} ms")


if __name__ == "__main__":
    main()
