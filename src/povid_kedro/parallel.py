"""Process pools for CPU work that holds the GIL (drawing scenes, encoding PNGs): threads do not
speed it up, processes do. Results come back in input order, so the output does not depend on
the number of workers."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a pool's start-up (about a second per spawned worker) costs more than it
# saves.
MIN_ITEMS = 512


def cpu_workers() -> int:
    """The CPUs this process may run on (its affinity, as a container or ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def process_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, over ``workers`` processes (default: :func:`cpu_workers`).

    ``fn`` must be a module-level function. Workers are spawned rather than forked: the caller
    may hold threads (torch's, MLflow's) that a fork would copy in an unknown state. One worker,
    or fewer than :data:`MIN_ITEMS` items, runs in this process.

    Each worker runs torch on one thread. Interrupts are the caller's: workers ignore SIGINT
    (Ctrl-C reaches the whole process group), and whatever ends the call, the workers are
    terminated at once rather than left to finish their chunks or, started but never fed, to
    hold the interpreter's exit.
    """
    workers = cpu_workers() if workers is None else workers
    if workers < 2 or len(items) < MIN_ITEMS:
        return [fn(x) for x in items]
    chunksize = max(1, math.ceil(len(items) / (workers * 8)))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker) as pool:  # exit terminates
        return pool.map(fn, items, chunksize=chunksize)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pool is the parallelism: a worker's own OpenMP threads only contend with the other
    # workers' (torch's noise took 5x as long in two workers of two threads each).
    os.environ["OMP_NUM_THREADS"] = "1"  # read when torch loads
    if "torch" in sys.modules:  # loaded already by the parent's main module, which spawn re-runs
        sys.modules["torch"].set_num_threads(1)
