"""The trained model in the MLflow model registry, servable as a describe-this-image endpoint.

:class:`PovidVLMModel` is an ``mlflow.pyfunc.PythonModel`` around a model directory (the one
:func:`povid_kedro.modeling.hf_dir.save_model_dir` writes), logged as an artifact, so that

- ``mlflow.pyfunc.load_model("models:/<name>@candidate").predict(df)`` returns one description
  per row of ``df`` (``image``: base64-encoded PNG/JPEG or a file path; optional ``prompt``);
- ``mlflow models serve -m "models:/<name>@candidate" --env-manager local`` serves the same at
  ``/invocations``.

:func:`log_and_register` logs it into the active run (a kedro-mlflow run, when there is one),
registers a new version and points an alias at it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

logger = logging.getLogger(__name__)

MODEL_DIR_ARTIFACT = "model_dir"
DEFAULT_PROMPT = "<image>\nDescribe the image."
DEFAULT_MAX_NEW_TOKENS = 96

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "prompt", required=False)]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
)
"""Input: ``image`` (base64 or path) and optional ``prompt``; output: one string per row."""


def decode_image(value: Any) -> Image.Image:
    """An image from a request cell: raw bytes, a base64 string (or data URL), or a file path.

    Args:
        value: The cell.

    Returns:
        The image in RGB.

    Raises:
        ValueError: If the value is neither a readable file nor decodable base64 image data.
    """
    data: bytes | None = None
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) < 4096 and os.path.isfile(text):
            with Image.open(text) as image:
                return image.convert("RGB")
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(
                f"image {text[:40]!r}... is neither an existing file nor base64 image data"
            ) from err
    if data is None:
        raise ValueError(f"image must be base64 text, bytes or a path, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ValueError(f"image data cannot be decoded: {err}") from err


def encode_image(image: Image.Image) -> str:
    """Base64 PNG of an image, as :class:`PovidVLMModel` accepts it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class PovidVLMModel(mlflow.pyfunc.PythonModel):
    """A vision-language model directory served as ``image (+ prompt) → description``.

    ``model_config`` keys (set at log time, see :func:`log_and_register`): ``prompt`` (used for rows
    without one), ``max_new_tokens``, ``batch_size``, ``dtype``.
    """

    def load_context(self, context: Any) -> None:
        """Load and validate the model directory artifact."""
        # Imported here so that unpickling the class does not load torch before it is needed.
        from povid_kedro.modeling.hf_dir import load_model_dir

        config = dict(getattr(context, "model_config", None) or {})
        self.prompt = str(config.get("prompt", DEFAULT_PROMPT))
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.batch_size = int(config.get("batch_size", 16))
        self.model, self.processor = load_model_dir(
            context.artifacts[MODEL_DIR_ARTIFACT], dtype=config.get("dtype")
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        """Describe each row's image.

        Args:
            context: The MLflow context (unused).
            model_input: ``image`` column (base64 PNG/JPEG or a file path) and optional ``prompt``
                (``"<image>\\n..."``; empty or missing rows use the configured prompt).
            params: Optional ``max_new_tokens``.

        Returns:
            One description per row.
        """
        from povid_kedro.modeling.generate import generate

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise ValueError(f"the input needs an 'image' column, got {list(frame.columns)}")
        images = [decode_image(value) for value in frame["image"]]
        prompts = [self.prompt] * len(images)
        if "prompt" in frame.columns:
            prompts = [
                p if isinstance(p, str) and p.strip() else self.prompt for p in frame["prompt"]
            ]
        max_new_tokens = int((params or {}).get("max_new_tokens") or self.max_new_tokens)
        return generate(
            self.model,
            self.processor,
            images,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            progress=False,
        )


_ENTRY_SCRIPT = (
    "import mlflow\n"
    "from povid_kedro.training.registry import PovidVLMModel\n"
    "mlflow.models.set_model(PovidVLMModel())\n"
)


def _requirements() -> list[str]:
    """Pinned requirements, given explicitly so MLflow does not load the model to infer them."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "transformers", "pillow", "pandas", "mlflow"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


@contextlib.contextmanager
def _tracking(tracking_uri: str | None) -> Iterator[None]:
    if tracking_uri is None:
        yield
        return
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def log_and_register(
    model_dir: str | os.PathLike[str],
    registered_name: str,
    alias: str,
    tracking_uri: str | None = None,
    extra_artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    *,
    experiment_name: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    artifact_name: str = "model",
) -> int:
    """Log a model directory as a :class:`PovidVLMModel`, register it, and set an alias.

    Logs into the active MLflow run when there is one (e.g. kedro-mlflow's), else into a new run.

    Args:
        model_dir: A directory :func:`~povid_kedro.modeling.hf_dir.load_model_dir` accepts.
        registered_name: Registered model name.
        alias: Alias pointed at the new version (e.g. ``"candidate"``).
        tracking_uri: Tracking (and registry) URI, e.g. ``sqlite:///mlflow.db``; ``None`` keeps
            the current one. Restored afterwards.
        extra_artifacts: More files or directories to log with the model (name → path).
        experiment_name: Experiment of the new run, when no run is active.
        model_config: :class:`PovidVLMModel` settings (``prompt``, ``max_new_tokens``, ...).
        artifact_name: Name of the logged model within the run.

    Returns:
        The new registered model version.

    Raises:
        FileNotFoundError: If ``model_dir`` is not a directory.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    artifacts = {MODEL_DIR_ARTIFACT: str(directory)}
    for name, path in (extra_artifacts or {}).items():
        if name == MODEL_DIR_ARTIFACT:
            raise ValueError(f"extra artifact name {name!r} is reserved")
        artifacts[name] = str(path)
    with _tracking(tracking_uri):
        active = mlflow.active_run()
        if active is None and experiment_name is not None:
            mlflow.set_experiment(experiment_name)
        run = contextlib.nullcontext(active) if active is not None else mlflow.start_run()
        with run, tempfile.TemporaryDirectory() as scratch:
            # "Models from code": MLflow stores this two-line script instead of a pickle.
            entry = Path(scratch) / "povid_vlm_model.py"
            entry.write_text(_ENTRY_SCRIPT)
            with warnings.catch_warnings():
                # An input example would make MLflow load and run the model here; the explicit
                # signature already describes the input.
                warnings.filterwarnings("ignore", ".*An input example was not provided")
                info = mlflow.pyfunc.log_model(
                    name=artifact_name,
                    python_model=str(entry),
                    artifacts=artifacts,
                    registered_model_name=registered_name,
                    signature=SIGNATURE,
                    pip_requirements=_requirements(),
                    model_config=dict(model_config or {}),
                )
        version = int(info.registered_model_version)
        MlflowClient().set_registered_model_alias(registered_name, alias, str(version))
    logger.info("registered %s version %d as @%s", registered_name, version, alias)
    return version
