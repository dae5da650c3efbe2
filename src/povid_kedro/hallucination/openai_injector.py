"""Rejections written by a model behind any OpenAI-compatible Chat Completions endpoint.

Per sample: the image (base64 PNG data URL), the question, the ground truth and the prompt of
the sample's hallucination type go out in one user message; the reply is cleaned and validated
(:mod:`validate`), asked for once more with the reason if unusable, and cached on disk.

Concurrency is an asyncio semaphore; rate limits are token buckets with a shared pause on
``Retry-After``; transport errors are retried here with exponential backoff and jitter (the
``openai`` client runs with ``max_retries=0`` so that every attempt is visible and counted).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import io
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from povid_kedro.hallucination.base import (
    IMAGE_ERROR,
    UNKNOWN_TASK_TYPE,
    ClientConfig,
    InjectionResult,
    Injector,
    LoadImage,
    assign_type,
    base_stats,
    check_samples,
    failures_frame,
    finish_stats,
    pairs_frame,
    provided_rows,
    redact,
    split_provided,
)
from povid_kedro.hallucination.cache import InjectionCache, cache_key, sha256_text
from povid_kedro.hallucination.config import InjectConfig
from povid_kedro.hallucination.ratelimit import RateLimiter, backoff_delay, parse_retry_after
from povid_kedro.hallucination.validate import Validator
from povid_kedro.schema import IMAGE_TOKEN, TASK_TYPES

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Failure reasons of the transport layer.
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CONNECTION_ERROR = "connection_error"
MALFORMED_RESPONSE = "malformed_response"
CLIENT_ERROR = "client_error"
API_ERROR = "api_error"

_DEFAULT_RETRY_NOTE = (
    "Your previous reply could not be used: {reason}. Reply again with only the rewritten "
    "answer, no comments."
)


class InjectorAuthError(RuntimeError):
    """The endpoint refused the credentials (HTTP 401/403): the run stops at the first refusal."""


class InjectionInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after the requests in flight were answered and cached.

    A ``KeyboardInterrupt``, so that Kedro and the shell treat it as the interrupt it is.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _AuthRefused(Exception):
    """A 401/403 reply; every other request of the run stops instead of being sent."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class _RequestFailed(Exception):
    """All attempts of one request failed; carries a reason code and a redacted detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.last_output: str | None = None  # the last reply before it, if any


@dataclass
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Counters:
    requests: int = 0
    cached: int = 0
    retries: int = 0
    validation_retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done: int = 0
    failed: int = 0
    # The first 401/403 of the run; once set no further request is sent.
    refused: _AuthRefused | None = None
    # The first SIGINT/SIGTERM of the run; once set no further sample is started.
    interrupted: signal.Signals | None = None
    active: int = 0  # samples started and not finished


@dataclass
class _Run:
    """What every sample of one run shares: the client, the rate limits and the thread pools."""

    client: openai.AsyncOpenAI
    limiter: RateLimiter
    semaphore: asyncio.Semaphore
    image_pool: concurrent.futures.Executor
    write_pool: concurrent.futures.Executor
    counters: _Counters


@dataclass
class _Attempt:
    """Why one request attempt failed, and the server's Retry-After if it sent one."""

    reason: str
    detail: str
    wait: float | None = None


def run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    Kedro nodes are sync, but a notebook or an async runner may already have a loop in this
    thread; then the coroutine runs on a fresh loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


def _handle_signals(
    loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]
) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``callback`` on ``loop``; returns what puts the previous
    handlers back. Only the main thread can own signals: elsewhere (a notebook's loop, a
    runner's thread) nothing changes and an interrupt stops the run as before."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, callback, int(sig))
        except (NotImplementedError, RuntimeError, ValueError):  # a loop without signals
            continue
        previous[sig] = before

    def restore() -> None:
        for sig, before in previous.items():
            loop.remove_signal_handler(sig)
            if before is not None:  # None: a handler installed outside Python, left as is
                signal.signal(sig, before)

    return restore


async def _until_done_or_stopped(workers: asyncio.Future[Any], counters: _Counters) -> int | None:
    """Await the workers with SIGINT and SIGTERM routed here. The first signal starts no new
    sample and lets those in flight finish, so that their answers, already paid for, reach the
    cache; a second one cancels them. Returns how many were abandoned that way, or None."""
    abandoned: int | None = None

    def interrupt(signum: int) -> None:
        nonlocal abandoned
        if counters.interrupted is None:
            counters.interrupted = signal.Signals(signum)
            logger.warning(
                "%s: finishing the %d sample(s) in flight so that their answers reach the "
                "cache; send it again to abandon them",
                counters.interrupted.name,
                counters.active,
            )
        else:
            abandoned = counters.active
            workers.cancel()

    restore = _handle_signals(asyncio.get_running_loop(), interrupt)
    try:
        await workers
    except asyncio.CancelledError:
        if counters.interrupted is None:
            raise
    finally:
        restore()
    return abandoned


def _pass_on(signum: int) -> None:
    """Give a drained interrupt to the handler the caller had installed (a Kedro hook that ends
    the MLflow run as KILLED, say). Python's defaults are left out: they would only end the
    process, without the message of :class:`InjectionInterrupted`."""
    handler = signal.getsignal(signum)
    if (
        callable(handler)
        and handler is not signal.default_int_handler
        and threading.current_thread() is threading.main_thread()
    ):
        signal.raise_signal(signum)


def image_digest(image: Image.Image) -> str:
    """sha256 over mode, size and pixels (independent of file format and PNG encoder)."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def image_data_url(image: Image.Image, max_side: int | None = None) -> str:
    """The image as a ``data:image/png;base64,...`` URL, downscaled to ``max_side`` if larger."""
    img = image.convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_prompt(template: str, *, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` (other braces in the prompt stay as written)."""
    return template.replace("{question}", question).replace("{answer}", answer)


class OpenAIInjector(Injector):
    """Injector backed by an OpenAI-compatible Chat Completions endpoint.

    Args:
        config: The typed parameters.
        client_config: Endpoint and key (from :class:`~povid_kedro.datasets.openai_client.
            OpenAIClientDataset`); when ``None``, ``openai.base_url`` and ``OPENAI_API_KEY``.
        cache: Persistent answer cache; ``None`` disables caching.
    """

    name = "openai"

    def __init__(
        self,
        config: InjectConfig,
        client_config: ClientConfig | Any | None = None,
        cache: InjectionCache | None = None,
    ) -> None:
        super().__init__(config)
        self.api = config.openai
        if client_config is None:
            key = os.environ.get("OPENAI_API_KEY")
            client_config = ClientConfig(
                base_url=self.api.base_url,
                api_key=key,
                key_source="the OPENAI_API_KEY environment variable" if key else "nowhere",
            )
        self.base_url: str = client_config.base_url or self.api.base_url
        self._api_key: str | None = client_config.api_key
        self.model: str = client_config.model or self.api.model
        self.key_source: str = getattr(client_config, "key_source", "the caller")
        self.cache = cache
        self.validator = Validator(config.validation)
        self.prompts = config.active_prompts
        self.retry_note = self.prompts.get("retry_note", _DEFAULT_RETRY_NOTE)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIInjector(base_url={self.base_url!r}, model={self.model!r})"

    def _redact(self, text: Any) -> Any:
        return redact(text, [self._api_key])

    # ------------------------------------------------------------------ public
    def inject(self, samples: pd.DataFrame, load_image: LoadImage) -> InjectionResult:
        """Ask the model for a rejected answer per sample (cached, concurrent, rate-limited).

        Args:
            samples: The canonical ground-truth table.
            load_image: Relative image path -> RGB image.

        Returns:
            Pairs, failures and stats (requests, cached, retries, tokens, cost, seconds ...).
        """
        t0 = time.perf_counter()
        check_samples(samples)
        provided, todo = split_provided(samples)
        counters = _Counters()
        try:
            rows, failures = run_coroutine(lambda: self._run(todo, load_image, counters))
        except InjectionInterrupted as stop:
            _pass_on(stop.signum)
            raise
        if counters.refused is not None:
            raise self._auth_error(counters)
        # Completion order is random; report failures in input order.
        position = {sid: i for i, sid in enumerate(samples["id"].astype(str))}
        failures.sort(key=lambda f: position.get(f["id"], -1))
        pairs = pairs_frame(samples, provided_rows(provided) + rows)
        fails = failures_frame(failures)
        stats = base_stats(len(samples))
        for name in (
            "requests",
            "cached",
            "retries",
            "validation_retries",
            "rate_limited",
            "prompt_tokens",
            "completion_tokens",
        ):
            stats[name] = float(getattr(counters, name))
        stats["passthrough"] = float(len(provided))
        stats["estimated_cost_usd"] = (
            counters.prompt_tokens / 1000 * self.api.price_per_1k_prompt_tokens
            + counters.completion_tokens / 1000 * self.api.price_per_1k_completion_tokens
        )
        stats["seconds"] = time.perf_counter() - t0
        finish_stats(stats, pairs, fails)
        logger.info(
            "openai injector (%s): %d pairs (%d provided, %d cached), %d failures, "
            "%d requests, %d retries, %d+%d tokens, ~$%.4f, %.1f s",
            self.model,
            len(pairs),
            len(provided),
            counters.cached,
            len(fails),
            counters.requests,
            counters.retries,
            counters.prompt_tokens,
            counters.completion_tokens,
            stats["estimated_cost_usd"],
            stats["seconds"],
        )
        return InjectionResult(pairs=pairs, failures=fails, stats=stats)

    def _auth_error(self, counters: _Counters) -> InjectorAuthError:
        refused = counters.refused
        assert refused is not None
        return InjectorAuthError(
            f"{self.base_url} refused the API key for model {self.model!r} "
            f"(HTTP {refused.status}: {refused.detail}). The key came from {self.key_source}; "
            "fix it there (or set OPENAI_API_KEY) and run again. The run stopped at the first "
            f"refusal after {counters.requests} request(s); the {counters.done} answer(s) "
            "received before it are in the injection cache and will not be paid for again."
        )

    # ------------------------------------------------------------------ run
    async def _run(
        self, todo: pd.DataFrame, load_image: LoadImage, counters: _Counters
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        api = self.api
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            # Local servers often need no key; the client insists on one.
            api_key=self._api_key or "not-needed",
            max_retries=0,
            timeout=api.timeout,
            # The SDK's aiohttp transport: about 1 ms less client CPU a request than its
            # default httpx stack, and client CPU is what bounds many concurrent requests
            # (concurrency 64 at 200 ms: 0.64 -> 0.74-0.85 of the ideal rate, benchmarks/).
            http_client=openai.DefaultAioHttpClient(timeout=api.timeout),
        )
        limiter = RateLimiter(api.rpm, api.tpm, api.burst_seconds)
        semaphore = asyncio.Semaphore(api.concurrency)
        # Pixels are decoded, hashed and PNG-encoded off the loop; cache writes (fsync) go to
        # one thread of their own so they keep their order.
        image_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(8, (os.cpu_count() or 2) + 2), thread_name_prefix="inject-image"
        )
        write_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inject-cache"
        )
        run = _Run(client, limiter, semaphore, image_pool, write_pool, counters)
        rows: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        bar = tqdm(
            total=len(todo), desc=f"inject ({self.model})", unit="sample", disable=not api.progress
        )

        def progress() -> None:
            bar.update(1)
            bar.set_postfix(
                done=counters.done, cached=counters.cached, failed=counters.failed, refresh=False
            )

        pending = iter(todo.to_dict("records"))

        async def worker() -> None:
            # Workers pull samples one by one, so images are prepared just ahead of their
            # request: a thousand encoded COCO images are never held in memory at once.
            for sample in pending:
                if counters.refused is not None or counters.interrupted is not None:
                    return
                counters.active += 1
                try:
                    outcome = await self._one(sample, load_image, run)
                except _AuthRefused as err:
                    counters.refused = counters.refused or err
                    return
                finally:
                    counters.active -= 1
                if "reason" in outcome:
                    counters.failed += 1
                    failures.append(outcome)
                else:
                    counters.done += 1
                    rows.append(outcome)
                progress()

        # Twice the request concurrency: while some workers wait for replies, the others
        # prepare the next images, so the semaphore never waits on image work.
        n_workers = max(1, min(len(todo), 2 * api.concurrency))
        try:
            abandoned = await _until_done_or_stopped(
                asyncio.gather(*(worker() for _ in range(n_workers))), counters
            )
        finally:
            bar.close()
            await client.close()
            image_pool.shutdown(wait=True)
            write_pool.shutdown(wait=True)
            if self.cache is not None:
                self.cache.close()
        if counters.interrupted is not None:
            where = "no cache"
            if self.cache is not None:
                where = f"the injection cache ({self.cache.directory})"
            lost = f" ({abandoned} in flight abandoned)" if abandoned is not None else ""
            raise InjectionInterrupted(
                f"{counters.interrupted.name} stopped the injection after {counters.done} "
                f"answer(s) and {counters.failed} failure(s) of {len(todo)}{lost}; the answers "
                f"are in {where}, and the same command goes on from there without asking for "
                "them again.",
                counters.interrupted,
            )
        return rows, failures

    async def _one(
        self, sample: dict[str, Any], load_image: LoadImage, run: _Run
    ) -> dict[str, Any]:
        """One sample: a cached answer, or requests until a reply passes validation."""
        loop = asyncio.get_running_loop()
        sid, task = str(sample["id"]), sample["task_type"]
        answer = str(sample["answer"])
        if task not in TASK_TYPES:
            return self._failure(
                sid, UNKNOWN_TASK_TYPE, f"task_type {task!r} is not one of {list(TASK_TYPES)}"
            )
        htype = assign_type(self.config, sid, task)
        try:
            key, entry, url = await loop.run_in_executor(
                run.image_pool, self._prepare, load_image, str(sample["image"]), sid, htype, answer
            )
        except Exception as err:  # any loader error is this sample's failure, not the run's
            return self._failure(sid, IMAGE_ERROR, f"{type(err).__name__}: {err}")
        fallback = "cached_failure"  # a cached failure written without a reason
        if entry is None:
            fallback = "invalid"
            assert url is not None
            question = " ".join(str(sample["prompt"]).replace(IMAGE_TOKEN, " ").split())
            prompt = render_prompt(self.prompts[htype], question=question, answer=answer)
            try:
                entry = await self._ask_until_valid(run, sid, prompt, url, answer)
            except _RequestFailed as err:
                # Transport failures are not cached: a later run should try again.
                return self._failure(sid, err.reason, err.detail, err.last_output)
            entry = {
                "sample_id": sid,
                "model": self.model,
                "prompt_version": self.config.prompt_version,
                "hallucination_type": htype,
                **entry,
            }
            if self.cache is not None:
                await loop.run_in_executor(run.write_pool, self.cache.put, key, entry)
        else:
            run.counters.cached += 1
        if entry.get("status") == "ok":
            return self._pair(sid, htype, entry["text"])
        return self._failure(
            sid, entry.get("reason") or fallback, entry.get("detail", ""), entry.get("raw")
        )

    async def _ask_until_valid(
        self, run: _Run, sid: str, prompt: str, url: str, answer: str
    ) -> dict[str, Any]:
        """Request, validate, and ask again with the validator's reason while a reply is unusable.

        Returns:
            The cache entry's outcome fields (status, raw and validated text, reason, usage).

        Raises:
            _RequestFailed: A request failed after its retries (with the last reply received).
        """
        text, raw, verdict = prompt, "", None
        prompt_tokens = completion_tokens = 0
        for attempt in range(self.api.validation_retries + 1):
            if attempt:
                run.counters.validation_retries += 1
                note = self.retry_note.replace("{reason}", verdict.detail if verdict else "")
                text = f"{prompt}\n\n{note}"
            try:
                reply = await self._request(run, text, url)
            except _RequestFailed as err:
                err.last_output = raw or None
                raise
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            raw = reply.text
            verdict = self.validator.check(raw, answer)
            if verdict.ok:
                break
            logger.debug("sample %s: unusable reply (%s), attempt %d", sid, verdict.reason, attempt)
        assert verdict is not None
        return {
            "status": "ok" if verdict.ok else "failed",
            "raw": self._redact(raw),
            "text": self._redact(verdict.text) if verdict.ok else None,
            "reason": verdict.reason,
            "detail": verdict.detail,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }

    def _prepare(
        self, load_image: LoadImage, path: str, sid: str, htype: str, answer: str
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        """Load and hash the image, look up the cache, encode the image only if needed.

        Runs in a worker thread (PIL releases the GIL while decoding and encoding).

        Returns:
            (cache key, usable cache entry or None, data URL or None when cached).
        """
        image = load_image(path)
        key = cache_key(
            model=self.model,
            prompt_version=self.config.prompt_version,
            hallucination_type=htype,
            sample_id=sid,
            image_hash=image_digest(image),
            answer_hash=sha256_text(answer),
        )
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is not None and (
            entry.get("status") == "ok" or not self.api.retry_cached_failures
        ):
            return key, entry, None
        return key, None, image_data_url(image, self.api.image_max_side)

    def _pair(self, sid: str, htype: str, text: str) -> dict[str, Any]:
        return {
            "id": sid,
            "rejected": self._redact(text),
            "hallucination_type": htype,
            "hallucination_detail": "",
            "injector": self.name,
            "prompt_version": self.config.prompt_version,
            "model": self.model,
        }

    def _failure(
        self, sid: str, reason: str, detail: str, last_output: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": sid,
            "reason": reason,
            "detail": self._redact(detail),
            "last_output": self._redact(last_output),
        }

    # ------------------------------------------------------------------ one request
    async def _request(self, run: _Run, text: str, image_url: str) -> _Reply:
        """One chat completion with retries; raises :class:`_RequestFailed` when all fail."""
        api = self.api
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            }
        ]
        # Rough reservation for the tpm bucket (~4 characters per token), settled on reply.
        estimate = len(text) / 4 + api.image_token_estimate + api.max_tokens
        failed = _Attempt(CONNECTION_ERROR, "no attempt made")
        for attempt in range(api.retries + 1):
            if attempt:
                run.counters.retries += 1
            outcome = await self._attempt(run, messages, estimate)
            if isinstance(outcome, _Reply):
                return outcome
            failed = outcome
            logger.debug("request attempt %d failed: %s", attempt + 1, failed.reason)
            if attempt < api.retries:
                delay = backoff_delay(attempt, api.backoff_base, api.backoff_max, self._rng)
                if failed.wait is not None:
                    # Honour Retry-After exactly (plus a little jitter, never less).
                    wait = failed.wait
                    delay = wait + self._rng.uniform(0, min(1.0, 0.1 * wait + 0.05))
                await asyncio.sleep(delay)
        raise _RequestFailed(failed.reason, f"after {api.retries + 1} attempt(s): {failed.detail}")

    async def _attempt(
        self, run: _Run, messages: list[dict[str, Any]], estimate: float
    ) -> _Reply | _Attempt:
        """One request in a concurrency slot, under the rate limits: the reply, or why not."""
        async with run.semaphore:
            # Rate limit inside the slot: a request starts as soon as it is granted, so
            # start times follow the bucket instead of bunching when slots free up.
            await run.limiter.acquire(estimate)
            if run.counters.refused is not None:
                # Another request's key was refused: this one would be refused too.
                raise run.counters.refused
            run.counters.requests += 1
            try:
                # The SDK's generic POST with the body as built: `chat.completions.create`
                # first walks every message through its typed-dict transform, about 1 ms of
                # client CPU a request (concurrency 64: 0.57 -> 0.63 of the ideal rate). The
                # reply stays the JSON it is (`cast_to=object`): no ChatCompletion is built.
                completion = await run.client.post(
                    "/chat/completions",
                    body={
                        "model": self.model,
                        "messages": messages,
                        "temperature": self.api.temperature,
                        "max_tokens": self.api.max_tokens,
                    },
                    cast_to=object,
                )
            except Exception as err:
                return self._classify(err, run)
            reply = self._parse(completion)
            if reply is None:
                return _Attempt(MALFORMED_RESPONSE, "the reply has no message content")
            used = reply.prompt_tokens + reply.completion_tokens
            run.limiter.settle(estimate, used or estimate)
            run.counters.prompt_tokens += reply.prompt_tokens
            run.counters.completion_tokens += reply.completion_tokens
            return reply

    def _classify(self, err: Exception, run: _Run) -> _Attempt:
        """A failed attempt worth retrying, or raise when retrying cannot help.

        Raises:
            _AuthRefused: The key was refused (401/403): the run stops.
            _RequestFailed: A client error, or a Retry-After beyond ``max_retry_after``.
        """
        api = self.api
        if isinstance(err, openai.RateLimitError):
            run.counters.rate_limited += 1
            wait = parse_retry_after(err.response.headers)
            if wait is not None:
                if wait > api.max_retry_after:
                    raise _RequestFailed(
                        RATE_LIMITED,
                        f"Retry-After {wait:.0f} s exceeds max_retry_after "
                        f"{api.max_retry_after:.0f} s",
                    ) from None
                # The limit is the account's: hold every request, not only this one.
                run.limiter.pause_until(time.monotonic() + wait)
            return _Attempt(RATE_LIMITED, self._describe_error(err), wait)
        if isinstance(err, openai.APITimeoutError):  # before its base, APIConnectionError
            return _Attempt(TIMEOUT, f"no reply within {api.timeout:g} s ({err})")
        if isinstance(err, openai.APIConnectionError):
            return _Attempt(CONNECTION_ERROR, self._describe_error(err))
        if isinstance(err, openai.APIStatusError):
            detail = self._describe_error(err)
            if err.status_code in (401, 403):
                raise _AuthRefused(err.status_code, detail) from None
            if err.status_code < 500 and err.status_code not in (408, 409):
                # Bad request / not found: retrying cannot help.
                raise _RequestFailed(f"{CLIENT_ERROR}_{err.status_code}", detail) from None
            return _Attempt(SERVER_ERROR, detail)
        if isinstance(err, openai.APIResponseValidationError | ValueError):
            # Includes a body that is not JSON (json.JSONDecodeError is a ValueError).
            return _Attempt(MALFORMED_RESPONSE, self._describe_error(err))
        # Anything else from the transport: retry, then fail.
        return _Attempt(API_ERROR, self._describe_error(err))

    @staticmethod
    def _parse(completion: Any) -> _Reply | None:
        """The answer and token counts of a chat completion's JSON; None if it has no text."""
        try:
            content = completion["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        if not isinstance(content, str):
            return None
        # Indexing by "choices" worked, so the JSON is an object.
        usage = completion.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        try:
            prompt, answer = (
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
        except (TypeError, ValueError):
            prompt = answer = 0  # counts are for the budget report; the answer is what was paid
        return _Reply(text=content, prompt_tokens=prompt, completion_tokens=answer)

    def _describe_error(self, err: BaseException) -> str:
        text = f"{type(err).__name__}: {err}"
        return str(self._redact(text))[:500]
