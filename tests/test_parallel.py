"""Pooled maps: one torch thread per worker; Ctrl-C stops the caller at once and no worker
outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import time
from povid_kedro.parallel import process_map

if __name__ == "__main__":
    process_map(time.sleep, [0.5] * 2000, workers=2)  # 500 s of work
"""


def test_each_worker_runs_torch_on_one_thread(monkeypatch):
    import torch

    from povid_kedro import parallel

    monkeypatch.setattr(parallel, "MIN_ITEMS", 0)
    assert torch.get_num_threads() > 1 or os.cpu_count() == 1  # this process keeps its own
    assert set(parallel.process_map(_torch_threads, range(4), workers=2)) == {1}


def _torch_threads(_: int) -> int:
    import torch

    return torch.get_num_threads()


def test_ctrl_c_stops_a_pooled_map_and_its_workers(tmp_path):
    script = tmp_path / "pooled.py"
    script.write_text(SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script)], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while len(_workers(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the workers are inside their chunks
    workers = _workers(process.pid)
    assert len(workers) == 2, "the pool never started"
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends: the whole process group
    process.wait(timeout=30)
    assert time.monotonic() - started < 10  # not the minutes of work left
    assert "KeyboardInterrupt" in process.stderr.read()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived its caller"


def _workers(pid: int) -> list[int]:
    """The pool's processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in path.read_text().split()] if path.exists() else []
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
