"""Time from launch to Streamlit's health endpoint: `make run` against a bare one-line Streamlit app.

python bench/bench_startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAMLIT = ROOT / ".venv" / "bin" / "streamlit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_health(cmd: list[str], port: int) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"no health answer from {' '.join(cmd)}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare.py"
        bare.write_text('import streamlit as st\nst.write("hello")\n')
        runs: dict[str, list[float]] = {"bare one-line app": [], "make run (Vector Lab)": []}
        for _ in range(args.repeat):  # alternate so machine drift hits both alike
            port = free_port()
            runs["bare one-line app"].append(
                time_to_health(
                    [
                        str(STREAMLIT),
                        "run",
                        str(bare),
                        "--server.port",
                        str(port),
                        "--server.headless",
                        "true",
                    ],
                    port,
                )
            )
            port = free_port()
            runs["make run (Vector Lab)"].append(time_to_health(["make", "-s", "run", f"PORT={port}"], port))
    base = statistics.median(runs["bare one-line app"])
    print("| command | median s to /_stcore/health | ratio |")
    print("|---|---:|---:|")
    for name, times in runs.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.2f} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
