"""The trained model in the MLflow model registry, servable as a describe-this-image endpoint.

:class:`PovidVLMModel` is an ``mlflow.pyfunc.PythonModel`` around a model directory (the one
:func:`povid_kedro.modeling.hf_dir.save_model_dir` writes), logged as an artifact, so that

- ``mlflow.pyfunc.load_model("models:/<name>@candidate").predict(df)`` returns one description
  per row of ``df`` (``image``: base64-encoded PNG/JPEG; optional ``prompt``);
- ``mlflow models serve -m "models:/<name>@candidate" --env-manager local`` serves the same at
  ``/invocations``.

A request is data from outside: images are base64 only (file paths are a local convenience,
``model_config={"allow_paths": True}`` at load time, never what a server does), and rows per
request, decoded pixels, prompt tokens and ``max_new_tokens`` are bounded (:data:`LIMITS`). A
request that breaks one gets HTTP 400 with a message and no stack trace; an unexpected failure
gets 500 with a pointer to the server log, never a traceback with the server's paths.

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
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel
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
    # MLflow fills a missing param with its default: 0 stands for the model's configured
    # max_new_tokens (a fixed number here would override every model's own setting).
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 0)]),
)
"""Input: ``image`` (base64) and optional ``prompt``; params: ``max_new_tokens`` (0: the
model's own); output: one string per row."""

LIMITS = {
    "max_rows": 32,  # rows per request
    "max_image_pixels": 4096 * 4096,  # width x height, checked before decoding
    "max_new_tokens_limit": 512,  # the most a request may ask for
    "max_prompt_tokens": 1024,  # text tokens of a prompt (image tokens not counted)
}
"""Default bounds of a request; each can be set in ``model_config`` at log or load time."""


class RequestError(MlflowException):
    """A request the model refuses: HTTP 400 from the scoring server, no stack trace."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def decode_image(
    value: Any, *, allow_paths: bool = False, max_pixels: int | None = None
) -> Image.Image:
    """An image from a request cell: raw bytes or base64 text (or a data URL).

    Args:
        value: The cell.
        allow_paths: Also accept a path to an image file (local use only: a server that opens
            paths lets its clients read its files).
        max_pixels: Refuse images with more pixels, read from the header before decoding.

    Returns:
        The image in RGB.

    Raises:
        RequestError: If the value is not decodable image data (or a readable file, with
            ``allow_paths``), or is too large. The message is the same whether or not a path
            exists on the server.
    """
    data: bytes | None = None
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if allow_paths and len(text) < 4096 and os.path.isfile(text):
            with Image.open(text) as image:
                _check_pixels(image, max_pixels)
                return image.convert("RGB")
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise RequestError(
                f"image {text[:24]!r}... is not base64 image data"
                + (
                    " or an existing file"
                    if allow_paths
                    else " (send the file's bytes base64-encoded)"
                )
            )
    if data is None:
        raise RequestError(f"image must be base64 text, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(image, max_pixels)
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise RequestError(f"image data cannot be decoded as an image ({err})") from err


def _check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise RequestError(
            f"image of {width} x {height} pixels is larger than the limit of {max_pixels:,} "
            "pixels (model_config max_image_pixels); resize it first"
        )


def encode_image(image: Image.Image) -> str:
    """Base64 PNG of an image, as :class:`PovidVLMModel` accepts it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class PovidVLMModel(PythonModel):
    """A vision-language model directory served as ``image (+ prompt) → description``.

    ``model_config`` keys (set at log time, see :func:`log_and_register`, or at load time):
    ``prompt`` (used for rows without one), ``max_new_tokens``, ``batch_size``, ``dtype``,
    ``allow_paths`` (default false), and the request bounds of :data:`LIMITS`.
    """

    def load_context(self, context: Any) -> None:
        """Load and validate the model directory artifact."""
        # Imported here so that unpickling the class does not load torch before it is needed.
        from povid_kedro.modeling.hf_dir import load_model_dir

        config = dict(getattr(context, "model_config", None) or {})
        self.prompt = str(config.get("prompt", DEFAULT_PROMPT))
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.batch_size = int(config.get("batch_size", 16))
        self.allow_paths = bool(config.get("allow_paths", False))
        self.limits = {key: int(config.get(key, default)) for key, default in LIMITS.items()}
        self.model, self.processor = load_model_dir(
            context.artifacts[MODEL_DIR_ARTIFACT], dtype=config.get("dtype")
        )
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.context_length = int(getattr(text_config, "max_position_embeddings", 0) or 0)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        """Describe each row's image.

        Args:
            context: The MLflow context (unused).
            model_input: ``image`` column (base64 PNG/JPEG) and optional ``prompt``
                (``"<image>\\n..."``; empty or missing rows use the configured prompt).
            params: Optional ``max_new_tokens`` (0 or missing: the model's configured one).

        Returns:
            One description per row.

        Raises:
            RequestError: A request outside the limits or with undecodable images (HTTP 400).
            MlflowException: Any other failure (HTTP 500; the traceback goes to the log only).
        """
        try:
            images, prompts, max_new_tokens = self._checked(model_input, params)
            return self._describe(images, prompts, max_new_tokens)
        except RequestError:
            raise
        except Exception as err:
            logger.exception("predict failed")
            raise MlflowException(
                f"the model failed on this request ({type(err).__name__}); see the server log",
                error_code=INTERNAL_ERROR,
            ) from err

    def _checked(
        self, model_input: Any, params: dict[str, Any] | None
    ) -> tuple[list[Image.Image], list[str], int]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise RequestError(f"the input needs an 'image' column, got {list(frame.columns)}")
        limits = self.limits
        if len(frame) > limits["max_rows"]:
            raise RequestError(
                f"{len(frame)} rows in one request; the limit is {limits['max_rows']} "
                "(model_config max_rows): split the request"
            )
        requested = (params or {}).get("max_new_tokens")
        max_new_tokens = int(requested or self.max_new_tokens)
        if not 1 <= max_new_tokens <= limits["max_new_tokens_limit"]:
            raise RequestError(
                f"max_new_tokens {max_new_tokens} is outside 1..{limits['max_new_tokens_limit']} "
                "(model_config max_new_tokens_limit)"
            )
        images = [
            decode_image(value, allow_paths=self.allow_paths, max_pixels=limits["max_image_pixels"])
            for value in frame["image"]
        ]
        prompts = [self.prompt] * len(images)
        if "prompt" in frame.columns:
            prompts = [
                p if isinstance(p, str) and p.strip() else self.prompt for p in frame["prompt"]
            ]
        for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            self._check_length(row, image, prompt, max_new_tokens)
        return images, prompts, max_new_tokens

    def _check_length(self, row: int, image: Image.Image, prompt: str, max_new_tokens: int) -> None:
        """The prompt within ``max_prompt_tokens``, and prompt + answer within the context."""
        from povid_kedro.modeling.generate import render_prompt

        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        limit = self.limits["max_prompt_tokens"]
        # Text far past the limit is refused before it is tokenised (a token of a real
        # tokenizer rarely spans more than 16 characters).
        if len(prompt) > 16 * limit or len(tokenizer(prompt)["input_ids"]) > limit:
            raise RequestError(
                f"row {row}: the prompt is longer than {limit} tokens (model_config "
                "max_prompt_tokens)"
            )
        if not self.context_length:
            return
        rendered = render_prompt(self.processor, prompt)
        n_prompt = len(self.processor(text=[rendered], images=[image])["input_ids"][0])
        if n_prompt + max_new_tokens > self.context_length:
            raise RequestError(
                f"row {row}: {n_prompt} prompt tokens (image included) + max_new_tokens "
                f"{max_new_tokens} exceed the model's context of {self.context_length} tokens"
            )

    def _describe(
        self, images: list[Image.Image], prompts: list[str], max_new_tokens: int
    ) -> list[str]:
        from povid_kedro.modeling.generate import generate

        return generate(
            self.model,
            self.processor,
            images,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            progress=False,
        )


def served_config(model_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every :class:`PovidVLMModel` setting, explicit: MLflow lets a loader override only the
    keys logged with the model (e.g. ``model_config={"allow_paths": True}`` for local use)."""
    return {
        "prompt": DEFAULT_PROMPT,
        "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
        "batch_size": 16,
        "allow_paths": False,
        **LIMITS,
        **(model_config or {}),
    }


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
    version_tags: Mapping[str, str] | None = None,
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
        version_tags: Tags set on the new version before the alias moves to it (e.g. the
            weights digest the gate checks).

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
                    model_config=served_config(model_config),
                )
        version = int(info.registered_model_version)
        client = MlflowClient()
        for key, value in (version_tags or {}).items():
            client.set_model_version_tag(registered_name, str(version), key, value)
        client.set_registered_model_alias(registered_name, alias, str(version))
    logger.info("registered %s version %d as @%s", registered_name, version, alias)
    return version
