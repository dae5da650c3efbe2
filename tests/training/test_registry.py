"""The registry round trip on a real SQLite MLflow store, and the model served over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from povid_kedro.modeling import build_model_and_processor, save_model_dir
from povid_kedro.training.registry import (
    RequestError,
    decode_image,
    encode_image,
    log_and_register,
)
from tests.modeling.conftest import PROMPT
from tests.training.conftest import MODEL_CFG

NAME = "povid-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tokenizer):
    """A tiny model registered as ``povid-test@candidate`` in a fresh SQLite store."""
    root = tmp_path_factory.mktemp("mlflow")
    model, processor = build_model_and_processor(MODEL_CFG, tokenizer)
    model_dir = save_model_dir(model, processor, root / "model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # An explicit artifact root keeps MLflow from writing ./mlruns in the working directory.
    mlflow.MlflowClient(uri).create_experiment("povid", artifact_location=(root / "art").as_uri())
    (root / "notes.txt").write_text("stage-2 report")
    version = log_and_register(
        model_dir,
        NAME,
        "candidate",
        tracking_uri=uri,
        extra_artifacts={"report": root / "notes.txt"},
        experiment_name="povid",
        model_config={"max_new_tokens": 8, "max_image_pixels": 1_000_000},
    )
    return uri, version, root


def test_register_load_by_alias_and_predict(registry, images):
    uri, version, root = registry
    assert version == 1
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "1"
        loaded = mlflow.pyfunc.load_model(
            f"models:/{NAME}@candidate", model_config={"allow_paths": True}
        )
        served_like = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    finally:
        mlflow.set_tracking_uri(before)
    image = images["img/0.png"]
    image.save(root / "scene.png")
    frame = pd.DataFrame(
        {"image": [encode_image(image), str(root / "scene.png")], "prompt": [PROMPT, None]}
    )
    answers = loaded.predict(frame)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # The same image, base64 or path, greedy: the same description.
    assert answers[0] == answers[1]
    assert loaded.predict(frame[["image"]].iloc[:1]) == answers[:1]
    # Without allow_paths (what a server loads) a path is refused like any non-image text.
    with pytest.raises(RequestError, match="not base64 image data"):
        served_like.predict(frame.iloc[1:])


def test_decode_image_refuses_paths_unless_allowed(tmp_path, images):
    images["img/0.png"].save(tmp_path / "a.png")
    with pytest.raises(RequestError) as real:
        decode_image(str(tmp_path / "a.png"))
    with pytest.raises(RequestError) as missing:
        decode_image(str(tmp_path / "missing.png"))
    assert real.value.message.replace("a.png", "X") == missing.value.message.replace(
        "missing.png", "X"
    )
    assert decode_image(str(tmp_path / "a.png"), allow_paths=True).size == images["img/0.png"].size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_served_model_describes_an_image(registry, images, tmp_path):
    uri, _, _ = registry
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    log = (tmp_path / "serve.log").open("w")
    # The server execs `uvicorn` by name: the venv's bin must be on PATH, as in an activated venv.
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@candidate"]
        + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers die with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up in 90 s: {(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)
        payload = {
            "dataframe_split": {
                "columns": ["image", "prompt"],
                "data": [[encode_image(images["img/1.png"]), PROMPT]],
            }
        }
        predictions = _post(f"{base}/invocations", payload)["predictions"]
        assert len(predictions) == 1 and isinstance(predictions[0], str)
        _bad_payloads_get_400_and_the_server_keeps_answering(f"{base}/invocations", payload, images)
    finally:
        _stop_group(server)
        log.close()


def _rows(*rows: list) -> dict:
    return {"dataframe_split": {"columns": ["image", "prompt"], "data": list(rows)}}


def _bad_payloads_get_400_and_the_server_keeps_answering(url, good, images) -> None:
    """Each bad request: 400, a message naming the problem, no traceback, no server path."""
    scene = images["img/1.png"]
    real_path = str(Path(__file__).resolve())
    huge = Image.new("RGB", (2500, 2500), (10, 20, 30))  # 6.25 M pixels, a few KB as PNG
    cases = {
        "a path that exists": (_rows([real_path, PROMPT]), "not base64 image data"),
        "a path that does not": (_rows(["/no/such/file.png", PROMPT]), "not base64 image data"),
        "/etc/hostname": (_rows(["/etc/hostname", PROMPT]), "not base64 image data"),
        "not an image": (_rows(["aGVsbG8gd29ybGQ=", PROMPT]), "cannot be decoded"),
        "too many pixels": (_rows([encode_image(huge), PROMPT]), "larger than the limit"),
        "too many rows": (
            _rows(*[[encode_image(scene), PROMPT]] * 40),
            "40 rows in one request; the limit is 32",
        ),
        "a 3,000-word prompt": (
            _rows([encode_image(scene), "<image>\n" + "describe " * 3000]),
            "longer than 1024 tokens",
        ),
        "past the context": (
            _rows([encode_image(scene), "<image>\n" + "red " * 480]),
            "exceed the model's context of",
        ),
        "max_new_tokens too large": (
            {**good, "params": {"max_new_tokens": 100000}},
            "outside 1..512",
        ),
    }
    messages = {}
    for name, (payload, expected) in cases.items():
        status, body = _post_status(url, payload)
        assert status == 400, (name, status, body)
        message = json.loads(body)["message"]
        assert expected in message, (name, message)
        assert "Traceback" not in body and "stack_trace" not in body, (name, body)
        assert "site-packages" not in body and "povid_kedro/" not in body, (name, body)
        messages[name] = message.split("Error:")[-1]
    # No file-existence oracle: the same answer for a real path, a missing one, a system file.
    answers = {messages[n].split("'")[-1] for n in ("a path that exists", "a path that does not")}
    assert len(answers) == 1
    assert len(_post(url, good)["predictions"]) == 1  # still answering


def _post_status(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _stop_group(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn runs in a child)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
