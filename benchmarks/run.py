"""Run every benchmark and write one table: ``make bench`` (``make bench-quick``: smaller runs).

Each benchmark runs in its own process, one after another (on a shared CPU a second job spoils
every timing), and hands back its rows as JSON. This writes ``benchmarks/results/latest.json``
and ``latest.md`` (date, machine, library versions, threads, load) and, with ``--readme``, puts
the table into README.md between its ``benchmarks`` markers. A number never fails the run; a
benchmark that crashes is listed as failed and makes the exit status 1.

Usage::

    .venv/bin/python benchmarks/run.py [--quick] [--readme] [--only dpo sft]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"

FIGURE = RESULTS / "cost.png"  # the cost curves; --readme copies it to README's figure
README_FIGURE = ROOT / "docs" / "figures" / "bench_cost.png"

# name -> (script, arguments of the full run, arguments of --quick; None: full run only). Sized
# for a full run under 15 minutes on 2 cores and --quick under 3 (the large model's seven
# variants take 90 s even at one step each, so --quick leaves them out).
QUICK_DPO = ["--steps", "1", "--repeats", "1", "--warmup", "1"]
SUITE: dict[str, tuple[str, list[str], list[str] | None]] = {
    "world_ingest": ("world_ingest", [], ["--train-images", "2000", "--eval-images", "500"]),
    "generate": ("generate", [], ["-n", "16", "--batch-size", "16", "--max-new-tokens", "32"]),
    "sft": ("sft", [], ["--images", "200", "--steps", "5", "--warmup", "2"]),
    "dpo": ("dpo", ["--steps", "3", "--compute"], ["--batch", "4", *QUICK_DPO]),
    "dpo_large": ("dpo", ["--model", "large"], None),
    "cost": (
        "cost",
        ["--plot", str(FIGURE)],
        ["--model", "tiny", "--batches", "1", "2", "--repeats", "1", "2", "--steps", "1"],
    ),
    "inject": (
        "inject",
        [],
        ["--concurrency", "8", "64", "--rounds", "5", "--resume-concurrency", "8"]
        + ["--rules-samples", "2000"],
    ),
    "pope": (
        "pope",
        ["--questions", "1500", "--repeats", "2"],
        ["--questions", "300", "--repeats", "1"],
    ),
}
# Run only when named (`--only kedro_run`): the default `kedro run` alone took 19 minutes here.
ON_REQUEST: dict[str, tuple[str, list[str], list[str] | None]] = {
    "kedro_run": ("kedro_run", [], None),
}
LIBRARIES = ("torch", "transformers", "trl", "peft", "kedro")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in LIBRARIES},
        "load_average": os.getloadavg()[0],
    }


def run_one(name: str, script: str, args: list[str]) -> dict[str, Any]:
    """One benchmark in its own process; its rows, or why it failed."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(HERE / f"{script}.py"), *args, "--json", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        if not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"failed": f"exit {done.returncode}: " + " / ".join(tail), "seconds": seconds}
        return {**json.loads(out.read_text()), "seconds": seconds, "exit": done.returncode}


def table(env: dict[str, Any], results: dict[str, dict[str, Any]], command: str) -> str:
    """The markdown the README includes."""
    versions = ", ".join(f"{name} {env[name]}" for name in LIBRARIES)
    lines = [
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), Python "
        f"{env['python']}, {versions}; load average {env['load_average']:.2f} before the run "
        f"(`{command}`). Ratio: how many times faster than the "
        "baseline the measure names (for the injector, the share of the ideal throughput).",
        "",
        "| benchmark | measure | result | ratio | threads |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "failed" in result:
            lines.append(f"| {name} | failed | {result['failed']} | | |")
            continue
        threads = result.get("threads") or ""
        for row in result["rows"]:
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            lines.append(f"| {name} | {row['measure']} | {row['result']} | {ratio} | {threads} |")
    settings = [f"- {name}: {r['settings']}" for name, r in results.items() if r.get("settings")]
    if settings:
        lines += ["", "Settings:", "", *settings]
    return "\n".join(lines) + "\n"


def put_in_readme(markdown: str, readme: Path) -> None:
    """Replace what stands between the README's benchmark markers."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{markdown}{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs of every benchmark")
    parser.add_argument("--readme", action="store_true", help="put the table into README.md")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SUITE | ON_REQUEST), help="run just these"
    )
    args = parser.parse_args(argv)
    env = machine()
    RESULTS.mkdir(exist_ok=True)  # a fresh clone has none, and the cost plot is written there
    results = {}
    for name in args.only or SUITE:
        script, full, quick = (SUITE | ON_REQUEST)[name]
        if args.quick and quick is None:
            continue
        print(f"{name} ...", flush=True)  # noqa: T201
        results[name] = run_one(name, script, quick if args.quick else full)
        print(f"{name}: {results[name]['seconds']:.0f} s", flush=True)  # noqa: T201
    if args.only:
        command = "benchmarks/run.py " + " ".join(["--quick"] * args.quick + ["--only", *args.only])
    else:
        command = "make bench-quick" if args.quick else "make bench"
    markdown = table(env, results, command)
    (RESULTS / "latest.json").write_text(json.dumps({"machine": env, "results": results}, indent=2))
    (RESULTS / "latest.md").write_text(markdown)
    if args.readme:
        put_in_readme(markdown, ROOT / "README.md")
        if "cost" in results and FIGURE.is_file():
            shutil.copyfile(FIGURE, README_FIGURE)
    print(markdown)  # noqa: T201
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
