"""Benchmark the hallucination injectors (not a test).

1. openai injector against the loopback chat server (``povid_kedro/testing/chat_server.py``) run in
   its own process, as a remote endpoint would be: N samples, fixed latency per request,
   bounded concurrency, a fresh on-disk cache. Ideal time = N x latency / concurrency.
2. rules injector on synthetic samples.

Usage (from the repository root)::

    .venv/bin/python benchmarks/inject.py
    .venv/bin/python benchmarks/inject.py --samples 1000 --latency 0.2 --concurrency 32
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from povid_kedro.experiments import project_parameters  # noqa: E402
from povid_kedro.hallucination import ClientConfig, InjectionCache, make_injector  # noqa: E402
from povid_kedro.testing.chat_server import ChatServer, rewrite_quoted  # noqa: E402
from povid_kedro.testing.synthetic import make_loader, make_samples  # noqa: E402

# The benchmark's pass mark: measured time within 25 % of the ideal.
MAX_RATIO = 1.25


def _rewrite(text: str) -> str:
    return f"{text} A purple giraffe stands nearby."


def _serve(latency: float, queue: Any, stop: Any) -> None:
    server = ChatServer().start()
    server.set_responder(rewrite_quoted(_rewrite, latency=latency))
    queue.put(server.base_url)
    stop.wait()
    server.stop()


def _params() -> dict[str, Any]:
    return project_parameters()["inject_hallucinations"]


def bench_openai(n: int, latency: float, concurrency: int, use_cache: bool) -> dict[str, float]:
    """Time the openai injector on ``n`` samples against a server in another process."""
    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(latency, queue, stop), daemon=True)
    proc.start()
    try:
        base_url = queue.get(timeout=30)
        params = copy.deepcopy(_params())
        params["injector"] = "openai"
        params["openai"].update(
            base_url=base_url,
            concurrency=concurrency,
            rpm=None,
            tpm=None,
            timeout=30,
            progress=False,
        )
        samples = make_samples(n, seed=0)
        loader = make_loader(64)
        client = ClientConfig(base_url=base_url, api_key="bench-key", model="bench-model")
        with tempfile.TemporaryDirectory() as tmp:
            cache = InjectionCache(Path(tmp) / "cache") if use_cache else None
            injector = make_injector(params, client_config=client, cache=cache)
            t0 = time.perf_counter()
            result = injector.inject(samples, loader)
            seconds = time.perf_counter() - t0
    finally:
        stop.set()
        proc.join(timeout=10)
    ideal = n * latency / concurrency
    return {
        "seconds": seconds,
        "ideal": ideal,
        "ratio": seconds / ideal,
        "pairs": float(len(result.pairs)),
        "failures": float(len(result.failures)),
        "requests": result.stats["requests"],
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
    """Run both benchmarks and print the results; exit 1 if the API run misses the mark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rules-samples", type=int, default=10_000)
    parser.add_argument("--no-cache", action="store_true", help="run without the disk cache")
    parser.add_argument("--json", type=Path, help="also write the results here (benchmarks/run.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    api = bench_openai(args.samples, args.latency, args.concurrency, not args.no_cache)
    print(  # noqa: T201
        f"openai injector: {args.samples} samples, {args.latency * 1000:.0f} ms latency, "
        f"concurrency {args.concurrency}: {api['seconds']:.2f} s "
        f"(ideal {api['ideal']:.2f} s, ratio {api['ratio']:.3f}, limit {MAX_RATIO}); "
        f"{api['pairs']:.0f} pairs, {api['failures']:.0f} failures, "
        f"{api['requests']:.0f} requests"
    )
    rules = bench_rules(args.rules_samples)
    print(  # noqa: T201
        f"rules injector: {args.rules_samples} samples in {rules['seconds']:.2f} s "
        f"({rules['pairs']:.0f} pairs, {rules['failures']:.0f} failures)"
    )
    if args.json:
        rows = [
            {
                "measure": f"API injector, {args.samples} samples, {args.latency * 1000:.0f} ms "
                f"latency, concurrency {args.concurrency}: ideal / measured",
                "result": f"{api['seconds']:.2f} s (ideal {api['ideal']:.2f} s), "
                f"{api['requests']:.0f} requests, {api['failures']:.0f} failures",
                "ratio": api["ideal"] / api["seconds"],
            },
            {
                "measure": f"rules injector, {args.rules_samples} samples",
                "result": f"{rules['seconds']:.2f} s "
                f"({args.rules_samples / rules['seconds']:.0f} samples/s)",
                "ratio": None,
            },
        ]
        args.json.write_text(json.dumps({"threads": None, "rows": rows}, indent=2))
    return 0 if api["ratio"] <= MAX_RATIO and api["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
