"""Benchmark the hallucination injectors (not a test).

1. The openai injector against the loopback chat server (``povid_kedro/testing/chat_server.py``)
   in its own process, as a remote endpoint would be: a fixed latency per request, each
   concurrency level given ``--rounds`` requests per connection (so every level's ideal time
   is ``rounds x latency``), a fresh on-disk cache. Ideal = N x latency / concurrency.
2. Resume: a run in a child process is stopped half-way, and the same command run again on
   its cache; the server counts every request, so the repeated ones are counted, not assumed.
   Stopped by SIGTERM (as by Ctrl-C or a scheduler), the run lets the requests in flight
   finish and caches them, so none should repeat; killed by SIGKILL, those in flight are lost
   and asked again. Then a re-run of the finished cache, which should send none.
3. The rules injector on synthetic samples.

Usage (from the repository root)::

    .venv/bin/python benchmarks/inject.py
    .venv/bin/python benchmarks/inject.py --concurrency 32 64 --rounds 25 --latency 0.2
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import multiprocessing as mp
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from povid_kedro.experiments import project_parameters
from povid_kedro.hallucination import ClientConfig, InjectionCache, make_injector
from povid_kedro.testing.chat_server import ChatServer, RecordedRequest, rewrite_quoted
from povid_kedro.testing.synthetic import make_loader, make_samples

# The pass mark: at least 0.85 of the ideal throughput at concurrency 32 and 64.
MIN_EFFICIENCY = 0.85


def _rewrite(text: str) -> str:
    return f"{text} A purple giraffe stands nearby."


def _serve(latency: float, queue: Any, stop: Any, counter: Any) -> None:
    server = ChatServer().start()
    answer = rewrite_quoted(_rewrite, latency=latency)

    def counting(request: RecordedRequest) -> Any:
        with counter.get_lock():
            counter.value += 1
        return answer(request)

    server.set_responder(counting)
    queue.put(server.base_url)
    stop.wait()
    server.stop()


class Server:
    """The chat server in a spawned process, with a count of the requests it answered."""

    def __init__(self, latency: float) -> None:
        self._ctx = mp.get_context("spawn")
        self._queue, self._stop = self._ctx.Queue(), self._ctx.Event()
        self._counter = self._ctx.Value("i", 0)
        self._proc = self._ctx.Process(
            target=_serve, args=(latency, self._queue, self._stop, self._counter), daemon=True
        )

    def __enter__(self) -> Server:
        self._proc.start()
        self.base_url: str = self._queue.get(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(timeout=10)

    @property
    def requests(self) -> int:
        with self._counter.get_lock():
            return int(self._counter.value)


@functools.cache
def _params() -> dict[str, Any]:
    """The injector's parameters as `kedro run` reads them (loaded once: ~0.5 s each time)."""
    return project_parameters()["inject_hallucinations"]


def _injector(base_url: str, concurrency: int, cache_dir: Path) -> Any:
    params = copy.deepcopy(_params())
    params["injector"] = "openai"
    params["openai"].update(
        base_url=base_url, concurrency=concurrency, rpm=None, tpm=None, timeout=30, progress=False
    )
    client = ClientConfig(base_url=base_url, api_key="bench-key", model="bench-model")
    return make_injector(params, client_config=client, cache=InjectionCache(cache_dir))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _inject(base_url: str, n: int, concurrency: int, cache_dir: Path) -> dict[str, float]:
    injector = _injector(base_url, concurrency, cache_dir)
    samples, loader = make_samples(n, seed=0), make_loader(64)
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = injector.inject(samples, loader)
    return {
        "seconds": time.perf_counter() - start,
        # This process only (the server is another): what one request costs the client.
        "cpu": _cpu_seconds() - cpu,
        "pairs": float(len(result.pairs)),
        "failures": float(len(result.failures)),
        "cached": float(result.stats["cached"]),
    }


def _inject_child(base_url: str, n: int, concurrency: int, cache_dir: str) -> None:
    logging.disable(logging.WARNING)
    try:
        _inject(base_url, n, concurrency, Path(cache_dir))
    except KeyboardInterrupt:  # InjectionInterrupted: the expected end of a SIGTERM
        sys.exit(1)


def bench_concurrency(
    latency: float, concurrency: int, rounds: int, server: Server
) -> dict[str, float]:
    """A fresh cache, ``rounds`` requests per connection."""
    n = rounds * concurrency
    before = server.requests
    with tempfile.TemporaryDirectory() as tmp:
        run = _inject(server.base_url, n, concurrency, Path(tmp))
    ideal = n * latency / concurrency
    return {**run, "n": n, "ideal": ideal, "requests": server.requests - before}


def bench_resume(
    latency: float, concurrency: int, rounds: int, server: Server, stop: signal.Signals
) -> dict[str, Any]:
    """Stop a run half-way with ``stop``, run it again, then re-run the finished cache."""
    n = rounds * concurrency
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp)
        entries = cache_dir / "entries.jsonl"
        before = server.requests
        child = ctx.Process(
            target=_inject_child, args=(server.base_url, n, concurrency, str(cache_dir))
        )
        child.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.is_alive():
            if entries.exists() and entries.read_bytes().count(b"\n") >= n // 2:
                break
            time.sleep(0.01)
        assert child.pid is not None
        os.kill(child.pid, stop)
        child.join()
        killed_requests = server.requests - before
        kept = InjectionCache(cache_dir)
        kept_entries = len(kept)
        mark = server.requests
        resumed = _inject(server.base_url, n, concurrency, cache_dir)
        resumed_requests = server.requests - mark
        mark = server.requests
        rerun = _inject(server.base_url, n, concurrency, cache_dir)
        rerun_requests = server.requests - mark
    return {
        "n": n,
        "killed_requests": killed_requests,
        "kept": kept_entries,
        "resumed": resumed,
        "resumed_requests": resumed_requests,
        # Received by the server from the killed run but not in its cache (in flight when it
        # died): asked twice.
        "repeated": killed_requests + resumed_requests - n,
        "rerun": rerun,
        "rerun_requests": rerun_requests,
    }


def bench_rules(n: int) -> dict[str, float]:
    """Time the rules injector (mining + edits + validation) on ``n`` synthetic samples."""
    samples = make_samples(n, seed=1)
    injector = make_injector(_params())
    t0 = time.perf_counter()
    result = injector.inject(samples, make_loader())
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "pairs": float(len(result.pairs)),
        "failures": float(len(result.failures)),
    }


def main() -> int:
    """Run the benchmarks and print the results; exit 1 if the API runs miss the mark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=20, help="requests per connection")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--resume-concurrency", type=int, default=32)
    parser.add_argument("--rules-samples", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows: list[dict[str, Any]] = []
    ok = True
    with Server(args.latency) as server:
        for concurrency in args.concurrency:
            api = bench_concurrency(args.latency, concurrency, args.rounds, server)
            efficiency = api["ideal"] / api["seconds"]
            if concurrency >= 32:
                ok = ok and efficiency >= MIN_EFFICIENCY and api["failures"] == 0
            print(  # noqa: T201
                f"openai injector, concurrency {concurrency:3d}: {api['n']:.0f} samples in "
                f"{api['seconds']:.2f} s (ideal {api['ideal']:.2f} s, {efficiency:.3f} of "
                f"ideal); {api['pairs']:.0f} pairs, {api['failures']:.0f} failures, "
                f"{api['requests']:.0f} requests, client CPU "
                f"{api['cpu'] / api['n'] * 1000:.1f} ms a request"
            )
            rows.append(
                {
                    "measure": f"API injector, {api['n']:.0f} samples, "
                    f"{args.latency * 1000:.0f} ms latency, concurrency {concurrency}: "
                    "ideal / measured",
                    "result": f"{api['seconds']:.2f} s (ideal {api['ideal']:.2f} s), "
                    f"{api['requests']:.0f} requests, {api['failures']:.0f} failures, "
                    f"client CPU {api['cpu'] / api['n'] * 1000:.1f} ms a request",
                    "ratio": efficiency,
                }
            )
        resumes = {
            stop: bench_resume(args.latency, args.resume_concurrency, args.rounds, server, stop)
            for stop in (signal.SIGTERM, signal.SIGKILL)
        }
    for stop, resume in resumes.items():
        print(  # noqa: T201
            f"{stop.name} and resume, {resume['n']} samples at concurrency "
            f"{args.resume_concurrency}: stopped after sending {resume['killed_requests']} "
            f"requests, {resume['kept']} answers cached; the resumed run sent "
            f"{resume['resumed_requests']} ({resume['repeated']} repeated) and ended with "
            f"{resume['resumed']['pairs']:.0f} pairs; a re-run of the finished cache sent "
            f"{resume['rerun_requests']} requests in {resume['rerun']['seconds']:.2f} s"
        )
        rows.append(
            {
                "measure": f"API injector stopped ({stop.name}) half-way and run again, "
                f"{resume['n']} samples, concurrency {args.resume_concurrency}: requests asked "
                "twice",
                "result": f"{resume['repeated']} repeated of {resume['killed_requests']} sent "
                f"before the stop ({resume['kept']} answers cached); resumed run "
                f"{resume['resumed_requests']} requests, {resume['resumed']['pairs']:.0f} pairs",
                "ratio": None,
            }
        )
        ok = ok and resume["rerun_requests"] == 0 and resume["resumed"]["failures"] == 0
    ok = ok and resumes[signal.SIGTERM]["repeated"] == 0
    resume = resumes[signal.SIGKILL]
    rows.append(
        {
            "measure": f"API injector re-run on its finished cache, {resume['n']} samples",
            "result": f"{resume['rerun_requests']} requests, {resume['rerun']['seconds']:.2f} s, "
            f"{resume['rerun']['pairs']:.0f} pairs",
            "ratio": None,
        }
    )
    rules = bench_rules(args.rules_samples)
    print(  # noqa: T201
        f"rules injector: {args.rules_samples} samples in {rules['seconds']:.2f} s "
        f"({rules['pairs']:.0f} pairs, {rules['failures']:.0f} failures)"
    )
    rows.append(
        {
            "measure": f"rules injector, {args.rules_samples} samples",
            "result": f"{rules['seconds']:.2f} s "
            f"({args.rules_samples / rules['seconds']:.0f} samples/s)",
            "ratio": None,
        }
    )
    if args.json:
        args.json.write_text(json.dumps({"threads": None, "rows": rows}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
