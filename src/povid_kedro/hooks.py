"""Project hooks."""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

from povid_kedro.params import ParameterError, validate_group
from povid_kedro.training.noise import GENERATED

logger = logging.getLogger(__name__)


def _every_pipeline() -> dict[str, Pipeline]:
    """Each pipeline package's pipeline, by name (without the composed ``povid`` and
    ``__default__``), to look up the producers of missing inputs."""
    from povid_kedro.pipeline_registry import PIPELINES, register_pipelines

    registered = register_pipelines()
    return {name: registered[name] for name in PIPELINES}


class MissingInputsError(RuntimeError):
    """A pipeline's input does not exist yet."""


class UpstreamCheckHooks:
    """Fail fast, and say which pipeline to run first, when a pipeline's inputs are missing.

    Without this a partial run (``kedro run --pipeline dpo_training``) would stop deep inside a
    node with a file-not-found error about a path, not about the step that makes it.
    """

    @hook_impl(tryfirst=True)  # before kedro-mlflow opens a run that would then end FINISHED
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        absent = [
            dataset
            for dataset in sorted(pipeline.inputs())
            if not dataset.startswith("params:")
            and dataset != "parameters"
            and not catalog.exists(dataset)
            # A lazy input (LazyJSONDataset) is read, and checked, only by a node that uses it.
            and not getattr(catalog.get(dataset), "loads_without_data", False)
        ]
        if not absent:
            return
        producers: dict[str, str] = {}
        for name, registered in _every_pipeline().items():
            for output in registered.all_outputs():
                producers.setdefault(output, name)
        # Inputs nothing here makes (an optional benchmark, API clients) are the user's to give.
        missing = [(d, producers[d]) for d in absent if d in producers]
        if missing:
            lines = [
                f"  - {dataset}: made by the {producer} pipeline "
                f"(`kedro run --pipeline {producer}`), or point the catalog entry at existing data"
                for dataset, producer in missing
            ]
            raise MissingInputsError(
                "this run needs inputs that do not exist yet:\n" + "\n".join(lines)
            )


class _PeakRss:
    """The largest resident set size of this process while it runs, sampled by a thread (Linux
    ``/proc``; elsewhere the process's lifetime peak from ``getrusage``)."""

    _STATM = Path("/proc/self/statm")

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _now(self) -> int:
        try:
            return int(self._STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._now())

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        self._thread.join()
        return max(self._peak, self._now()) / 2**20


class NodeTimerHooks:
    """Wall time and peak resident memory of each node: logged, and recorded in the run's MLflow
    run as ``node.<name>.seconds`` and ``node.<name>.peak_rss_mb``."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[float, _PeakRss]] = {}
        self._seconds: dict[str, float] = {}

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = (time.perf_counter(), _PeakRss())

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        self._finish(node)

    @hook_impl
    def on_node_error(self, node: Node) -> None:
        self._finish(node)

    def _finish(self, node: Node) -> None:
        if node.name not in self._started:
            return
        start, rss = self._started.pop(node.name)
        seconds, peak = time.perf_counter() - start, rss.stop()
        self._seconds[node.name] = seconds
        logger.info("node %s took %.1f s, peak memory %.0f MiB", node.name, seconds, peak)
        if mlflow.active_run() is not None:
            mlflow.log_metrics(
                {f"node.{node.name}.seconds": seconds, f"node.{node.name}.peak_rss_mb": peak}
            )

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._seconds:
            summary = ", ".join(f"{name} {s:.1f} s" for name, s in self._seconds.items())
            logger.info("node times: %s", summary)
        self._seconds = {}


class ParameterCheckHooks:
    """Check every parameter group a run uses, and what can be known to fail, before the first
    node: a typo or a wrong type must not cost a stage-1 training (or pass unnoticed)."""

    def __init__(self) -> None:
        self._conf: Path | None = None
        self._env: str | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._conf = Path(context.config_loader.conf_source)
        self._env = context.env

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        groups = sorted(
            {
                name[len("params:") :].split(".")[0]
                for name in pipeline.inputs()
                if name.startswith("params:")
            }
        )
        parameters = catalog.load("parameters")
        for group in groups:
            if group in parameters:
                validate_group(group, parameters[group], self._source(group, run_params))
        self._check_noisy_responses(pipeline, catalog, parameters)

    def _source(self, group: str, run_params: dict[str, Any]) -> str:
        """The files that define ``group`` (base and the run's environment), and ``--params``."""
        files = []
        if self._conf is not None:
            for env in dict.fromkeys(("base", self._env or "local")):
                for path in sorted((self._conf / env).glob("**/parameters*.yml")):
                    if any(line.startswith(f"{group}:") for line in path.read_text().splitlines()):
                        files.append(str(path.relative_to(self._conf.parent)))
        runtime = run_params.get("runtime_params") or {}
        if any(str(key).split(".")[0] == group for key in runtime):
            files.append("--params")
        return ", ".join(files) or "no file defines it"

    @staticmethod
    def _check_noisy_responses(
        pipeline: Pipeline, catalog: DataCatalog, parameters: dict[str, Any]
    ) -> None:
        """Stage 2 in ``generated`` mode needs the free answers under noise, made beforehand."""
        mode = (parameters.get("noise_trigger") or {}).get("mode")
        needs = "noisy_responses" in pipeline.inputs()
        if mode != GENERATED or not needs or not catalog.exists("noisy_responses"):
            return
        responses = catalog.load("noisy_responses")
        if "noisy_rejected" not in responses or responses["noisy_rejected"].isna().all():
            raise ParameterError(
                "noise_trigger.mode is 'generated' but noisy_responses holds no free answers "
                "under noise (it was made in teacher_forced mode): run `kedro run --pipeline "
                "noise_trigger` with noise_trigger.mode: generated first"
            )


class StoreError(RuntimeError):
    """The MLflow store cannot be used as it is; the message names the file and the fix."""


class RunLockedError(RuntimeError):
    """Another run of this project is in progress."""


LOCK_FILE = ".kedro-run.lock"


class RunGuardHooks:
    """One run at a time per project, an MLflow store that is what it claims to be, and run
    records that say how a run ended.

    - The MLflow store is checked before kedro-mlflow opens it: a zero-byte or unreadable
      ``mlflow.db`` would otherwise become a new empty store (runs, registry and champion
      gone without a word), and a store copied from another project would keep writing
      artifacts into that project's ``mlruns/``.
    - A run holds an exclusive lock on ``.kedro-run.lock`` (released by the OS when the process
      dies, even by SIGKILL); a second run fails at once, naming the first.
    - SIGINT and SIGTERM end the MLflow run as KILLED (not FINISHED, as MLflow's exit handler
      would); a run that died by SIGKILL is marked KILLED, and its unfinished logged models
      FAILED, by the next run that takes the lock. Python drops an exception raised while a
      finaliser or weakref callback runs, so the handler's KeyboardInterrupt can be lost; the
      next node boundary raises it again rather than let the run go on. A signal that lands
      inside a write to the store (kedro-mlflow logging parameters, say) leaves that write's
      transaction open, holding SQLite's lock: the run is then ended once the interrupt has
      unwound it, at exit (or by this process's next run), not from the handler, whose own
      write would wait for the lock until SQLite gave up.
    """

    def __init__(self) -> None:
        self._root: Path | None = None
        self._lock: Any = None
        self._previous: dict[str, Any] = {}
        self._handlers: dict[int, Any] = {}
        self._stopped_by: str | None = None
        self._end_pending = False  # an interrupted run still to be ended as KILLED
        self._at_exit = False

    @hook_impl(tryfirst=True)  # before kedro-mlflow's hook creates or opens the store
    def after_context_created(self, context: Any) -> None:
        self._root = Path(context.project_path)
        loader = context.config_loader
        if "mlflow" not in loader.config_patterns:
            loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
        try:
            conf = loader["mlflow"]
        except Exception:  # noqa: BLE001 - no mlflow.yml: kedro-mlflow's defaults, nothing to check
            return
        # mlflow.yml's URI is the one kedro-mlflow sets (the environment variable may still hold
        # an earlier session's in this process).
        uri = (conf.get("server") or {}).get("mlflow_tracking_uri") or os.environ.get(
            "MLFLOW_TRACKING_URI"
        )
        experiment = ((conf.get("tracking") or {}).get("experiment") or {}).get("name")
        check_store(uri, self._root, experiment)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._end_interrupted_run()  # this process's last run, stopped inside a store write
        self._release()  # a run of this process that failed before it started holds none
        root = self._root or Path(run_params.get("project_path") or ".")
        self._lock, self._previous = acquire_run_lock(root / LOCK_FILE, run_params)
        self._stopped_by = None
        # Before kedro-mlflow opens the run: a signal that arrives once the run exists must
        # find these handlers (Python's own SIGINT handler would end it FAILED).
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._handlers[signum] = signal.signal(signum, self._interrupted)
            except ValueError:  # not the main thread (e.g. a notebook's worker): no handlers
                break

    @hook_impl(tryfirst=True)
    def before_node_run(self) -> None:
        self._stop_if_interrupted()

    @hook_impl(tryfirst=True)
    def after_node_run(self) -> None:
        self._stop_if_interrupted()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()
        self._stop_if_interrupted()

    def _stop_if_interrupted(self) -> None:
        if self._stopped_by is not None:
            raise KeyboardInterrupt(f"interrupted by {self._stopped_by}")

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()

    def started(self) -> None:
        """Called once the MLflow run is open: record it, and close a killed predecessor's."""
        import mlflow

        active = mlflow.active_run()
        if self._lock is not None and active is not None:
            record = {
                **json.loads(_read_lock(self._lock) or "{}"),
                "mlflow_run_id": active.info.run_id,
            }
            _write_lock(self._lock, record)
        current = active.info.run_id if active else None
        killed = self._previous.get("mlflow_run_id")
        if killed is None and active is not None:
            # The previous holder died between opening its MLflow run and recording it here
            # (kedro-mlflow logs every parameter in between): its run is the one left RUNNING
            # since it took the lock.
            killed = orphaned_run(self._previous, active.info.experiment_id, current)
        mark_killed_run(killed, current)

    def _interrupted(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        self._stopped_by = name
        logger.error("run interrupted by %s: its MLflow run ends as KILLED", name)
        self._restore_handlers()  # a second signal acts at once
        self._end_pending = True
        if _inside_store(frame):
            self._end_at_exit()
        else:
            self._end_interrupted_run()
        raise KeyboardInterrupt(f"interrupted by {name}")

    def _end_interrupted_run(self, last_try: bool = False) -> None:
        if not self._end_pending:
            return
        try:
            while mlflow.active_run():
                mlflow.set_tag("povid.stopped_by", self._stopped_by)
                mlflow.end_run("KILLED")
        except Exception as error:  # noqa: BLE001 - the store is busy (another process, say)
            if not last_try:
                self._end_at_exit()  # try again once the process is done with it
                return
            logger.warning(
                "could not end the interrupted MLflow run (%s): the next run marks it KILLED", error
            )
        self._end_pending = False
        self._release()

    def _end_at_exit(self) -> None:
        # Registered after mlflow's own exit handler (at its import), so it runs first: mlflow's
        # would end the run FINISHED.
        if not self._at_exit:
            atexit.register(self._end_interrupted_run, last_try=True)
            self._at_exit = True

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    def _release(self) -> None:
        self._restore_handlers()
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the lock
            self._lock = None


def _inside_store(frame: Any) -> bool:
    """Whether the interrupted code is inside MLflow's SQL store, where its thread may hold the
    database's write lock."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(("sqlalchemy.", "mlflow.store.")):
            return True
        frame = frame.f_back
    return False


class RunStartedHooks:
    """Runs after kedro-mlflow has opened the run (``trylast``): hands it to the guard."""

    def __init__(self, guard: RunGuardHooks) -> None:
        self._guard = guard

    @hook_impl(trylast=True)
    def before_pipeline_run(self) -> None:
        self._guard.started()


def check_store(uri: str | None, root: Path, experiment: str | None) -> None:
    """Refuse an SQLite MLflow store that is empty, unreadable, locked, not MLflow's, or whose
    experiment keeps its artifacts in another project.

    Args:
        uri: The tracking URI (only ``sqlite:///`` ones are checked).
        root: The project directory (relative paths are relative to it).
        experiment: The experiment name runs are logged to.

    Raises:
        StoreError: Naming the file, what is wrong and the fix.
    """
    if not uri or not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    path = path if path.is_absolute() else root / path
    if not path.exists():
        return  # a first run creates it
    if path.stat().st_size == 0:
        raise StoreError(
            f"the MLflow store {path} is an empty file (0 bytes): opening it would create a new "
            "store, with every run, registered model and champion alias gone. Restore it from a "
            "backup, or delete it to start a new store on purpose"
        )
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "experiments" not in tables or "alembic_version" not in tables:
                raise StoreError(
                    f"{path} is an SQLite file but not an MLflow store (no experiments table); "
                    "point mlflow.yml's mlflow_tracking_uri at the project's store"
                )
            row = db.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
            ).fetchone()
    except sqlite3.DatabaseError as err:
        hint = (
            "another process holds a write lock on it (a running `kedro run`, `mlflow ui` or "
            "server): wait for it or stop it"
            if "locked" in str(err)
            else "restore it from a backup, or move it aside to start a new store"
        )
        raise StoreError(f"the MLflow store {path} cannot be read ({err}): {hint}") from err
    location = row[0] if row else None
    if location and location.startswith(("file:", "/")):
        where = Path(location.removeprefix("file://").removeprefix("file:"))
        if not where.resolve().is_relative_to(root.resolve()):
            raise StoreError(
                f"the MLflow store {path} keeps experiment {experiment!r}'s artifacts in {where}, "
                f"outside this project ({root}): it was copied from another project, whose "
                "mlruns/ would receive this project's runs and models. Delete the copied "
                "mlflow.db (and mlruns/) to start this project's own store, or copy the "
                "project with its store paths rewritten"
            )


def acquire_run_lock(path: Path, run_params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Take the project's run lock, or fail naming the run that holds it.

    Returns:
        The open lock file (closing it releases the lock) and the previous holder's record
        (``{}`` if none: that holder has ended, cleanly or not).

    Raises:
        RunLockedError: Another process holds the lock.
    """
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = json.loads(_read_lock(handle) or "{}")
        handle.close()
        raise RunLockedError(
            f"another run of this project is in progress (pid {holder.get('pid')} on "
            f"{holder.get('host')}, pipelines {holder.get('pipelines')}, started "
            f"{holder.get('started')}, MLflow run {holder.get('mlflow_run_id')}): wait for it "
            f"to finish or stop it (kill {holder.get('pid')}); runs at once would mix their "
            f"outputs and reports. Lock file: {path}"
        ) from None
    previous = json.loads(_read_lock(handle) or "{}")
    _write_lock(
        handle,
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pipelines": run_params.get("pipeline_names") or ["__default__"],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_ms": int(time.time() * 1000),  # MLflow's start_time unit
        },
    )
    return handle, previous


def orphaned_run(previous: dict[str, Any], experiment_id: str, current: str | None) -> str | None:
    """The run a dead lock holder opened without recording it: the one still RUNNING in this
    experiment that started after the holder took the lock (the lock lets no other run start)."""
    since = previous.get("started_ms")
    if since is None:
        return None
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and attributes.start_time >= {int(since)}",
    )
    found = [run.info.run_id for run in runs if run.info.run_id != current]
    return found[0] if len(found) == 1 else None


def _read_lock(handle: Any) -> str:
    handle.seek(0)
    return handle.read().strip()


def _write_lock(handle: Any, record: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def mark_killed_run(run_id: str | None, current: str | None) -> None:
    """End a run whose process died without closing it (SIGKILL, power loss) as KILLED, and
    fail the logged models it left PENDING (a kill during registration)."""
    if not run_id or run_id == current:
        return
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status != "RUNNING":
        return
    client.set_tag(run_id, "povid.stopped_by", "process died (found by the next run)")
    client.set_terminated(run_id, "KILLED")
    logger.warning("MLflow run %s was left RUNNING by a process that died: marked KILLED", run_id)
    for model in client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    ):
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            logger.warning("logged model %s of that run was never finished: FAILED", model.model_id)
