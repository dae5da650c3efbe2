"""Faults a user meets around a run: a second run at once, a kill by signal, a broken or copied
MLflow store, parameters with typos or wrong types. Real sessions, real processes, real stores."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus

from povid_kedro.hooks import (
    LOCK_FILE,
    MissingInputsError,
    RunGuardHooks,
    RunLockedError,
    StoreError,
)
from povid_kedro.params import ParameterError
from tests.support.kedro_project import run_pipeline

KEDRO = Path(sys.executable).parent / "kedro"
# Enough scenes that the world takes some seconds to draw: time to send a signal mid-run.
SLOW_WORLD = ["--params", "embedded_world.n_train_images=3000,embedded_world.n_eval_images=40"]


def _runs(project: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("povid_kedro")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _start_cli_run(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # stderr to a file, not a pipe: a traceback longer than the pipe's buffer would block the
    # run in its last write, unread.
    with (project / "stderr.log").open("w") as stderr:
        return subprocess.Popen(
            [str(KEDRO), "run", *args],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )


def _stderr(project: Path) -> str:
    return (project / "stderr.log").read_text()[-4000:]


def _wait_until_running(project: Path, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {_stderr(project)}")
        try:
            running = [r for r in _runs(project) if r.info.status == "RUNNING"]
        except Exception:  # noqa: BLE001 - the store is being created by the run
            running = []
        if running:
            return running[0].info.run_id
        time.sleep(0.3)
    process.kill()
    pytest.fail("no RUNNING MLflow run appeared")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_by_a_signal_is_recorded_as_killed(project, sig):
    process = _start_cli_run(project, "--pipeline", "embedded_world", *SLOW_WORLD)
    run_id = _wait_until_running(project, process)
    # Inside the world node, or on a loaded machine while kedro-mlflow still logs the parameters.
    time.sleep(1.0)
    process.send_signal(sig)
    assert process.wait(timeout=60) != 0, _stderr(project)
    run = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "KILLED", _stderr(project)
    assert run.data.tags["povid.stopped_by"] == sig.name


# A signal that lands while this process writes to the store (kedro-mlflow logs its parameters
# just after the run appears): the write's transaction is open and holds SQLite's lock.
_SIGNAL_IN_A_WRITE = """
import signal, sys, time
import mlflow, sqlalchemy
from povid_kedro.hooks import RunGuardHooks

def interrupt(connection, cursor, statement, *args):
    if statement.startswith("INSERT INTO params"):
        signal.raise_signal(signal.SIGTERM)

mlflow.set_tracking_uri(sys.argv[1])
guard = RunGuardHooks()
guard.before_pipeline_run({"project_path": sys.argv[2]})
run_id = mlflow.start_run().info.run_id
print(run_id, flush=True)
sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", interrupt)
print(time.time(), flush=True)
try:
    mlflow.log_param("lr", 0.1)
except KeyboardInterrupt:
    if sys.argv[3] == "exit":
        raise
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", interrupt)
    guard.before_pipeline_run({"project_path": sys.argv[2]})  # a notebook's next run
    sys.exit(3 if mlflow.MlflowClient().get_run(run_id).info.status == "KILLED" else 4)
"""


@pytest.mark.parametrize("ended_by", ["exit", "next_run"])
def test_a_signal_inside_a_write_to_the_store_still_ends_the_run_as_killed(project, ended_by):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    # A new process, as `kedro run` is: not this one's MLflow state (mlflow.set_experiment
    # exports MLFLOW_EXPERIMENT_ID, an id from another test's store).
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    }
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_A_WRITE, uri, str(project), ended_by],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ended = time.time()
    assert done.returncode != 0, done.stderr[-4000:]
    if ended_by == "next_run":  # 3: ended by the next run, before the process exited
        assert done.returncode == 3, done.stderr[-4000:]
    assert len(done.stdout.split()) == 2, done.stderr[-4000:]  # the run's id, then the time
    run_id, signalled = done.stdout.split()
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "KILLED", done.stderr[-4000:]
    assert run.data.tags["povid.stopped_by"] == "SIGTERM"
    assert "database is locked" not in done.stderr
    assert ended - float(signalled) < 15  # not after waiting out the lock (mlflow waits 20 s)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_dropped_by_a_finaliser_still_stops_the_run(project):
    # Python drops an exception raised while a finaliser runs (it prints "Exception ignored"):
    # a SIGINT that lands there would otherwise let the run go on to the end and exit 0.
    guard = RunGuardHooks()
    guard.before_pipeline_run({"project_path": str(project)})

    class Finalised:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    Finalised()  # the handler runs inside __del__; its KeyboardInterrupt goes nowhere
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        guard.after_node_run()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        guard.before_node_run()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    guard.before_pipeline_run({"project_path": str(project)})  # and the lock released
    guard.after_node_run()  # a new run starts uninterrupted
    guard.after_pipeline_run()


def test_a_run_killed_outright_is_marked_by_the_next_one(project):
    process = _start_cli_run(project, "--pipeline", "embedded_world", *SLOW_WORLD)
    run_id = _wait_until_running(project, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could close it
    # What a kill during registration leaves: a logged model of that run still PENDING.
    experiment = client.get_run(run_id).info.experiment_id
    pending = client.create_logged_model(experiment, name="stage2_model", source_run_id=run_id)
    # The next run takes the lock the dead process held, and closes its record.
    run_pipeline(project, "embedded_world")
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert "process died" in killed.data.tags["povid.stopped_by"]
    assert client.get_logged_model(pending.model_id).status == LoggedModelStatus.FAILED


def test_a_run_killed_before_the_lock_recorded_it_is_found_by_the_next_one(project):
    # The window between kedro-mlflow opening the run and the lock recording it: a process killed
    # there leaves a lock without a run id and a run RUNNING that started after the lock.
    run_pipeline(project, "embedded_world")
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("povid_kedro").experiment_id
    (project / LOCK_FILE).write_text(
        json.dumps({"pid": 2**22 + 1, "started_ms": int(time.time() * 1000) - 1})
    )
    orphan = client.create_run(experiment).info.run_id
    run_pipeline(project, "embedded_world")
    killed = client.get_run(orphan)
    assert killed.info.status == "KILLED"
    assert "process died" in killed.data.tags["povid.stopped_by"]


@contextmanager
def _lock_held(code: str, path: Path) -> Iterator[subprocess.Popen]:
    """Another process running ``code`` (which prints "locked" once it holds ``path``)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


RUN_LOCK_HOLDER = (
    "import sys, time; from pathlib import Path; "
    "from povid_kedro.hooks import acquire_run_lock; "
    "lock, _ = acquire_run_lock(Path(sys.argv[1]), {'pipeline_names': ['evaluate']}); "
    "print('locked', flush=True); time.sleep(60)"
)


def test_a_second_run_at_once_fails_naming_the_first(project):
    with _lock_held(RUN_LOCK_HOLDER, project / LOCK_FILE) as holder:
        with pytest.raises(RunLockedError) as err:
            run_pipeline(project, "embedded_world")
        assert f"pid {holder.pid}" in str(err.value) and "['evaluate']" in str(err.value)
    # Once the first has ended, runs go ahead again.
    run_pipeline(project, "embedded_world")
    assert [r.info.status for r in _runs(project)] == ["FINISHED"]


def test_an_empty_store_is_refused_not_silently_recreated(project):
    (project / "mlflow.db").write_bytes(b"")
    with pytest.raises(StoreError, match="empty file"):
        run_pipeline(project, "embedded_world")
    assert (project / "mlflow.db").stat().st_size == 0  # left as it was for the user


def test_a_corrupt_store_names_the_file_and_the_fix(project):
    (project / "mlflow.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as err:
        run_pipeline(project, "embedded_world")
    assert str(project / "mlflow.db") in str(err.value)
    assert "cannot be read" in str(err.value) and "backup" in str(err.value)


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_locked_store_says_who_to_wait_for(project):
    MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").search_experiments()
    mlflow.set_tracking_uri("")
    with _lock_held(LOCK_HOLDER, project / "mlflow.db"), pytest.raises(StoreError) as err:
        run_pipeline(project, "embedded_world")
    assert str(project / "mlflow.db") in str(err.value)
    assert "write lock" in str(err.value) and "mlflow ui" in str(err.value)


def test_a_store_copied_from_another_project_is_refused(project, tmp_path_factory):
    run_pipeline(project, "embedded_world")  # a store whose artifacts live in this project
    mlflow.set_tracking_uri("")  # the test process let go of it
    elsewhere = tmp_path_factory.mktemp("other") / "mlruns"
    with sqlite3.connect(project / "mlflow.db") as db:  # as if copied from `elsewhere`'s project
        db.execute("UPDATE experiments SET artifact_location = ?", (elsewhere.as_uri(),))
    with pytest.raises(StoreError) as err:
        run_pipeline(project, "embedded_world")
    assert "outside this project" in str(err.value) and str(elsewhere) in str(err.value)


def test_a_parameter_typo_fails_before_any_node(project):
    with pytest.raises(ParameterError) as err:
        run_pipeline(project, "embedded_world", {"embedded_world": {"n_eval_image": 2}})
    assert "n_eval_image" in str(err.value)
    assert "conf/base/parameters_embedded_world.yml" in str(err.value)
    assert not (project / "data" / "01_raw" / "world").exists()


def test_a_wrong_type_names_the_key_and_the_file(project):
    with pytest.raises(ParameterError) as err:
        run_pipeline(project, "dpo_training", {"dpo_training": {"stage1": {"max_steps": "abc"}}})
    message = str(err.value)
    assert "stage1.max_steps: expected int, got 'abc'" in message
    assert "conf/base/parameters_dpo_training.yml" in message and "--params" in message


def test_an_evaluate_typo_is_caught(project):
    with pytest.raises(ParameterError, match="max_image: unknown key"):
        run_pipeline(project, "evaluate", {"evaluate": {"max_image": 2}})


def test_a_vision_pretraining_typo_is_caught(project):
    with pytest.raises(
        ParameterError, match=r"base_model\.vision_pretraining: unknown keys \['epoch'\]"
    ):
        run_pipeline(project, "base_model", {"base_model": {"vision_pretraining": {"epoch": 3}}})


def test_an_ablation_row_typo_names_the_row_before_any_training(project):
    rows = {"povid": {}, "noise_only": {"stage_2": {"hallucination_weight": 0}}}
    with pytest.raises(ParameterError) as err:
        run_pipeline(project, "ablation", {"ablation": {"rows": rows}})
    message = str(err.value)
    assert "ablation.rows.noise_only: unknown keys ['stage_2']" in message
    assert "conf/base/parameters_ablation.yml" in message


def test_an_unknown_pipeline_lists_the_pipelines(project):
    with pytest.raises(
        ValueError, match="Failed to find the pipeline named 'embeded_world'"
    ) as err:
        run_pipeline(project, "embeded_world")
    cause = str(err.value.__cause__)
    assert "there is no pipeline 'embeded_world'" in cause
    assert "embedded_world, ingest_ground_truth" in cause and "povid" in cause
    assert "ablation" in cause


def test_the_composed_povid_pipeline_can_be_requested(project):
    # `--pipeline povid` is the real-scale entry point; it has no package of its own. Here it
    # stops at its first missing input, naming the pipeline that makes it.
    with pytest.raises(MissingInputsError, match="embedded_world pipeline"):
        run_pipeline(project, "povid")


def test_a_lazy_input_is_left_to_the_node_that_reads_it(project):
    # train_instances (COCO's 450 MB train annotations at real scale) is read only with
    # on_policy enabled: a run without it is not refused for it, only for what it does need.
    with pytest.raises(MissingInputsError) as caught:
        run_pipeline(project, "dpo_training")
    message = str(caught.value)
    assert "  - base_model: made by the base_model pipeline" in message
    assert "train_instances" not in message


def test_the_shipped_on_policy_run_config_passes_the_parameter_check(project):
    # conf/runs/on_policy_partner.yml is what README tells users to run: its parameters must
    # stay valid (a renamed key would fail here with a ParameterError, before the inputs check).
    run = yaml.safe_load((project / "conf/runs/on_policy_partner.yml").read_text())["run"]
    with pytest.raises(MissingInputsError, match="base_model"):
        run_pipeline(project, "dpo_training", run["params"], env=run["env"])


def test_generated_noise_without_free_answers_fails_before_stage_1(project):
    # noisy_responses made in teacher_forced mode carry no free answers under noise; asking
    # stage 2 for generated mode used to fail only after stage 1 had overwritten its model.
    target = project / "data" / "04_feature" / "noisy_responses.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ["a"], "noise_step": [500]}).to_parquet(target)
    with pytest.raises(ParameterError, match="noisy_responses holds no free answers"):
        run_pipeline(project, "dpo_training", {"noise_trigger": {"mode": "generated"}})
    assert not (project / "data" / "06_models" / "stage1_model").exists()
