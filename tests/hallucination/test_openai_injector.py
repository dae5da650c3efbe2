"""The openai injector against a real loopback server, through the real ``openai`` client."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from PIL import Image

from povid_kedro.hallucination import ClientConfig, InjectionCache, make_injector
from povid_kedro.hallucination.openai_injector import InjectorAuthError
from povid_kedro.hallucination.validate import normalize
from povid_kedro.testing.chat_server import Action, ChatServer, RecordedRequest, rewrite_quoted
from povid_kedro.testing.synthetic import hallucinate
from tests.hallucination.conftest import REPO, SECRET, deep_merge


def _client(server: ChatServer, key: str = SECRET) -> ClientConfig:
    return ClientConfig(base_url=server.base_url, api_key=key, model="test-model")


def _check_partition(samples: pd.DataFrame, result: Any) -> None:
    """Every input id is in exactly one of pairs / failures."""
    pair_ids, fail_ids = list(result.pairs["id"]), list(result.failures["id"])
    assert len(set(pair_ids)) == len(pair_ids)
    assert not set(pair_ids) & set(fail_ids)
    assert sorted(pair_ids + fail_ids) == sorted(samples["id"])


def test_success_sends_image_prompt_and_key(openai_params, server, samples, load_image):
    injector = make_injector(openai_params, client_config=_client(server))
    result = injector.inject(samples, load_image)

    _check_partition(samples, result)
    assert len(result.pairs) == len(samples) and result.failures.empty
    for row in result.pairs.itertuples():
        assert row.rejected == hallucinate(row.answer)
        assert row.injector == "openai" and row.model == "test-model"
        assert row.prompt_version == "v1"
        assert row.hallucination_type in {"cooccurrence", "relation", "attribute"} | {
            "omission",
            "wrong_reasoning",
        }
    reasoning = result.pairs[result.pairs["task_type"] == "reasoning"]
    assert set(reasoning["hallucination_type"]) <= {"wrong_reasoning"}

    requests = server.chat_requests
    assert len(requests) == len(samples)
    first = requests[0]
    assert first.headers["authorization"] == f"Bearer {SECRET}"
    assert first.json["model"] == "test-model"
    assert first.json["max_tokens"] == openai_params["openai"]["max_tokens"]
    (url,) = first.image_urls
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "PNG" and image.mode == "RGB"
    # The ground truth travels quoted, the question without the <image> token.
    answers = set(samples["answer"])
    assert all(r.quoted in answers for r in requests)
    assert all("<image>" not in r.user_text for r in requests)

    stats = result.stats
    assert stats["requests"] == len(samples) and stats["cached"] == 0
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    expected_cost = (
        stats["prompt_tokens"] / 1000 * 0.001 + stats["completion_tokens"] / 1000 * 0.002
    )
    assert stats["estimated_cost_usd"] == pytest.approx(expected_cost)
    assert all(isinstance(v, float) for v in stats.values())


def test_latency_runs_concurrently_within_the_limit(openai_params, server, load_image):
    from povid_kedro.testing.synthetic import make_samples

    samples = make_samples(16, seed=5)
    server.set_responder(rewrite_quoted(hallucinate, latency=0.2))
    params = deep_merge(openai_params, {"openai": {"concurrency": 8}})
    t0 = time.perf_counter()
    result = make_injector(params, client_config=_client(server)).inject(samples, load_image)
    elapsed = time.perf_counter() - t0

    assert len(result.pairs) == 16
    # 16 requests x 0.2 s at concurrency 8 is 0.4 s ideally; sequential would be 3.2 s.
    assert 0.4 <= elapsed < 1.6
    events = sorted(
        [(r.received, 1) for r in server.chat_requests]
        + [(r.answered, -1) for r in server.chat_requests]
    )
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak <= 8


def test_429_retry_after_is_honoured(openai_params, server, samples, load_image):
    one = samples.head(1)
    server.script(Action.error(429, retry_after=1))
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)

    assert len(result.pairs) == 1
    first, second = server.chat_requests
    assert first.status == 429
    assert second.received - first.answered >= 1.0
    assert result.stats["rate_limited"] == 1 and result.stats["retries"] == 1


def test_500_then_success_is_retried(openai_params, server, samples, load_image):
    one = samples.head(1)
    server.script(Action.error(500), Action.error(502))
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)

    assert len(result.pairs) == 1
    assert [r.status for r in server.chat_requests] == [500, 502, 200]
    assert result.stats["retries"] == 2


def test_persistent_500_becomes_a_failure(openai_params, server, samples, load_image):
    two = samples.head(2)
    server.set_responder(lambda r: Action.error(500))
    result = make_injector(openai_params, client_config=_client(server)).inject(two, load_image)

    _check_partition(two, result)
    assert result.pairs.empty
    assert set(result.failures["reason"]) == {"server_error"}
    # 1 + retries attempts per sample.
    assert len(server.chat_requests) == 2 * 3


def test_client_error_is_not_retried(openai_params, server, samples, load_image):
    one = samples.head(1)
    server.set_responder(lambda r: Action.error(400))
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)

    assert result.failures["reason"].tolist() == ["client_error_400"]
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_run_at_once(openai_params, server, samples, load_image, status):
    # With a wrong key every sample would be refused: the run stops after the first refusal
    # instead of pacing through all of them, and names the endpoint and the key's source.
    server.set_responder(lambda r: Action.error(status))
    client = ClientConfig(
        base_url=server.base_url, api_key=SECRET, model="test-model", key_source="the vault"
    )
    with pytest.raises(InjectorAuthError) as caught:
        make_injector(openai_params, client_config=client).inject(samples, load_image)

    message = str(caught.value)
    assert server.base_url in message and f"HTTP {status}" in message
    assert "the vault" in message and SECRET not in message
    # Only requests already in flight with the first one (concurrency 4) were sent.
    assert len(server.chat_requests) <= openai_params["openai"]["concurrency"] < len(samples)


def test_answers_before_a_refusal_stay_in_the_cache(
    openai_params, server, samples, load_image, tmp_path
):
    params = deep_merge(openai_params, {"openai": {"concurrency": 1}})
    answered = rewrite_quoted(hallucinate)
    server.set_responder(lambda r: answered(r) if r.index < 3 else Action.error(401))
    cache = InjectionCache(tmp_path / "cache")
    with pytest.raises(InjectorAuthError, match="3 answer"):
        make_injector(params, client_config=_client(server), cache=cache).inject(
            samples, load_image
        )
    assert len(server.chat_requests) == 4
    assert len(InjectionCache(tmp_path / "cache")) == 3


def test_timeout_is_retried_then_fails(openai_params, server, samples, load_image):
    params = deep_merge(openai_params, {"openai": {"timeout": 0.3}})
    one, other = samples.head(1), samples.iloc[1:2]

    server.script(Action.hang(5))
    result = make_injector(params, client_config=_client(server)).inject(one, load_image)
    assert len(result.pairs) == 1 and result.stats["retries"] == 1

    server.reset()
    server.set_responder(lambda r: Action.hang(5))
    t0 = time.perf_counter()
    result = make_injector(params, client_config=_client(server)).inject(other, load_image)
    assert result.failures["reason"].tolist() == ["timeout"]
    assert len(server.chat_requests) == 3
    assert time.perf_counter() - t0 < 3.0


def test_malformed_json_body_is_retried_or_reported(openai_params, server, samples, load_image):
    one, other = samples.head(1), samples.iloc[1:2]
    server.script(Action.malformed())
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)
    assert len(result.pairs) == 1 and result.stats["retries"] == 1

    server.reset()
    server.set_responder(lambda r: Action.malformed())
    result = make_injector(openai_params, client_config=_client(server)).inject(other, load_image)
    assert result.failures["reason"].tolist() == ["malformed_response"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": []}',
        b'{"choices": [{"message": {"content": null}}]}',
        b'{"choices": [{"message": {}}], "usage": "n/a"}',
        b"[]",
        b'"text"',
    ],
)
def test_json_without_an_answer_is_a_malformed_response(
    openai_params, server, samples, load_image, body
):
    server.set_responder(lambda r: Action("malformed", body=body))
    injector = make_injector(openai_params, client_config=_client(server))
    result = injector.inject(samples.head(1), load_image)
    assert result.failures["reason"].tolist() == ["malformed_response"]
    assert result.pairs.empty


def test_refusal_is_asked_again_with_the_reason_then_recorded(
    openai_params, server, samples, load_image
):
    one = samples.head(1)
    server.set_responder(lambda r: Action.refusal())
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)

    assert result.pairs.empty
    failure = result.failures.iloc[0]
    assert failure["reason"] == "refusal"
    assert "sorry" in failure["last_output"].lower()
    first, second = server.chat_requests
    assert "could not be used" not in first.user_text
    assert "could not be used" in second.user_text and "refusal" in second.user_text
    assert result.stats["validation_retries"] == 1


def test_refusal_then_good_answer_gives_a_pair(openai_params, server, samples, load_image):
    one = samples.head(1)
    server.script(Action.refusal())
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)
    assert result.pairs["rejected"].tolist() == [hallucinate(one["answer"].iloc[0])]


def test_identical_answer_is_rejected(openai_params, server, samples, load_image):
    one = samples.head(1)
    server.set_responder(rewrite_quoted(lambda text: f"  {text.upper()}  "))
    result = make_injector(openai_params, client_config=_client(server)).inject(one, load_image)
    assert result.failures["reason"].tolist() == ["identical"]


def test_wrapped_answer_is_unwrapped(openai_params, server, samples, load_image):
    def respond(request: RecordedRequest) -> Action:
        return Action.wrapped(hallucinate(request.quoted or ""))

    server.set_responder(respond)
    result = make_injector(openai_params, client_config=_client(server)).inject(samples, load_image)
    assert len(result.pairs) == len(samples)
    for row in result.pairs.itertuples():
        assert row.rejected == hallucinate(row.answer)


def _sample_of(request: RecordedRequest, by_answer: dict[str, str]) -> str:
    return by_answer[request.quoted or ""]


def test_second_run_is_served_from_the_cache(openai_params, server, samples, load_image, tmp_path):
    cache_dir = tmp_path / "cache"
    first = make_injector(
        openai_params, client_config=_client(server), cache=InjectionCache(cache_dir)
    ).inject(samples, load_image)
    assert first.stats["requests"] == len(samples)

    server.reset()
    second = make_injector(
        openai_params, client_config=_client(server), cache=InjectionCache(cache_dir)
    ).inject(samples, load_image)
    assert server.chat_requests == []
    assert second.stats["requests"] == 0 and second.stats["cached"] == len(samples)
    pd.testing.assert_frame_equal(first.pairs, second.pairs)


def test_cache_key_changes_with_model_and_prompt_version(
    openai_params, server, samples, load_image, tmp_path
):
    one = samples.head(1)
    cache = InjectionCache(tmp_path / "cache")
    make_injector(openai_params, client_config=_client(server), cache=cache).inject(one, load_image)
    other_model = ClientConfig(base_url=server.base_url, api_key=SECRET, model="other-model")
    make_injector(openai_params, client_config=other_model, cache=cache).inject(one, load_image)
    v2 = deep_merge(
        openai_params,
        {"prompt_version": "v2", "prompts": {"v2": openai_params["prompts"]["v1"]}},
    )
    make_injector(v2, client_config=_client(server), cache=cache).inject(one, load_image)
    assert len(server.chat_requests) == 3 and len(cache) == 3


RESUME_SCRIPT = """
import sys
from povid_kedro.hallucination import ClientConfig, InjectionCache, make_injector
from povid_kedro.testing.synthetic import make_loader, make_samples
import yaml

params = yaml.safe_load(open(sys.argv[3]))
client = ClientConfig(base_url=sys.argv[1], api_key="k", model="test-model")
injector = make_injector(params, client_config=client, cache=InjectionCache(sys.argv[2]))
injector.inject(make_samples(40, seed=9), make_loader())
"""


def _start_injection(
    server: ChatServer, params: dict, cache_dir: Path, *, script: str = RESUME_SCRIPT, **popen
) -> subprocess.Popen:
    """The injector over 40 samples in a child process, against ``server``, caching in
    ``cache_dir``: a run that can be signalled or killed like a user's."""
    params_file = cache_dir.with_name(cache_dir.name + "-params.yml")
    params_file.write_text(yaml.safe_dump(params))
    return subprocess.Popen(
        [sys.executable, "-c", script, server.base_url, str(cache_dir), str(params_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **popen,
    )


def test_killed_run_resumes_without_repeating_cached_samples(
    openai_params, server, load_image, tmp_path
):

    from povid_kedro.testing.synthetic import make_samples

    samples = make_samples(40, seed=9)
    by_answer = dict(zip(samples["answer"], samples["id"], strict=True))
    server.set_responder(rewrite_quoted(hallucinate, latency=0.05))
    params = deep_merge(openai_params, {"openai": {"concurrency": 2}})
    cache_dir = tmp_path / "cache"
    proc = _start_injection(server, params, cache_dir)
    try:
        deadline = time.monotonic() + 30
        while len(server.chat_requests) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up, as with a crash or OOM kill
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()

    cache = InjectionCache(cache_dir)
    cached_ids = {e["sample_id"] for e in cache.entries()}
    assert 0 < len(cached_ids) < len(samples)
    run1 = len(server.chat_requests)
    server.reset()
    server.set_responder(rewrite_quoted(hallucinate))

    result = make_injector(params, client_config=_client(server), cache=cache).inject(
        samples, load_image
    )
    asked_again = {_sample_of(r, by_answer) for r in server.chat_requests}
    assert not asked_again & cached_ids
    assert len(server.chat_requests) == len(samples) - len(cached_ids)
    assert result.stats["cached"] == len(cached_ids)
    assert len(result.pairs) == len(samples)
    assert run1 >= len(cached_ids)

    server.reset()
    again = make_injector(
        params, client_config=_client(server), cache=InjectionCache(cache_dir)
    ).inject(samples, load_image)
    assert server.chat_requests == [] and again.stats["cached"] == len(samples)


# A handler of the caller's own, as the project's Kedro hook installs to end its MLflow run.
CALLER_HANDLER = """
import signal, sys
def stopped(signum, frame):
    print("caller's handler ran", file=sys.stderr, flush=True)
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stopped)
"""


@pytest.mark.parametrize(
    ("signum", "caller_handler"), [("SIGINT", False), ("SIGTERM", False), ("SIGTERM", True)]
)
def test_interrupted_run_caches_every_answer_it_paid_for(
    openai_params, server, load_image, tmp_path, signum, caller_handler
):
    """Ctrl-C or a scheduler's SIGTERM: the requests in flight finish and reach the cache, so
    the run that goes on repeats none of them; then the caller's own handler, if any, runs."""

    from povid_kedro.testing.synthetic import make_samples

    samples = make_samples(40, seed=9)
    server.set_responder(rewrite_quoted(hallucinate, latency=0.2))
    params = deep_merge(openai_params, {"openai": {"concurrency": 4}})
    cache_dir = tmp_path / "cache"
    script = (CALLER_HANDLER if caller_handler else "") + RESUME_SCRIPT
    proc = _start_injection(
        server, params, cache_dir, script=script, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while len(server.chat_requests) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        os.kill(proc.pid, getattr(signal, signum))
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode != 0
    assert "InjectionInterrupted" in stderr and f"{signum} stopped the injection" in stderr
    assert ("caller's handler ran" in stderr) == caller_handler
    sent = len(server.chat_requests)
    cache = InjectionCache(cache_dir)
    assert 10 <= len(cache) == sent < len(samples)  # nothing asked for was lost

    server.reset()
    server.set_responder(rewrite_quoted(hallucinate))
    result = make_injector(params, client_config=_client(server), cache=cache).inject(
        samples, load_image
    )
    assert len(server.chat_requests) == len(samples) - sent  # none asked twice
    assert len(result.pairs) == len(samples)


def test_a_second_interrupt_abandons_the_requests_in_flight(
    openai_params, server, load_image, tmp_path
):

    server.set_responder(rewrite_quoted(hallucinate, latency=30.0))
    params = deep_merge(openai_params, {"openai": {"concurrency": 4, "timeout": 60.0}})
    proc = _start_injection(server, params, tmp_path / "c", stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(server.chat_requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # waiting for the answers in flight
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)  # well before the 30 s answers
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "SIGINT stopped the injection after 0 answer(s)" in stderr
    # Two workers per request slot: 4 requests sent, 4 samples prepared behind them.
    assert "(8 in flight abandoned)" in stderr
    assert f"the injection cache ({tmp_path / 'c'})" in stderr


def test_rpm_limit_is_respected(openai_params, server, load_image):
    from povid_kedro.testing.synthetic import make_samples

    samples = make_samples(20, seed=11)
    # 600 rpm = 10/s with a 0.5 s burst (5 requests).
    params = deep_merge(
        openai_params, {"openai": {"rpm": 600, "burst_seconds": 0.5, "concurrency": 16}}
    )
    t0 = time.perf_counter()
    result = make_injector(params, client_config=_client(server)).inject(samples, load_image)
    elapsed = time.perf_counter() - t0

    assert len(result.pairs) == 20
    assert elapsed >= (20 - 5) / 10 - 0.1
    times = sorted(r.received for r in server.chat_requests)
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        # Burst + one second of rate (+1 for timer granularity).
        assert in_window <= 5 + 10 + 1


def test_unusable_rows_are_failures_and_provided_rows_pass_through(
    openai_params, server, samples, load_image
):
    rows = samples.head(5).copy()
    rows.loc[0, "rejected"] = "A published rejected answer."
    rows.loc[1, "task_type"] = "chitchat"
    rows.loc[2, "image"] = "missing.png"

    def loader(path: str) -> Image.Image:
        if path == "missing.png":
            raise FileNotFoundError(path)
        return load_image(path)

    result = make_injector(openai_params, client_config=_client(server)).inject(rows, loader)
    _check_partition(rows, result)
    provided = result.pairs[result.pairs["id"] == rows.loc[0, "id"]].iloc[0]
    assert provided["rejected"] == "A published rejected answer."
    assert provided["injector"] == "provided"
    reasons = dict(zip(result.failures["id"], result.failures["reason"], strict=True))
    assert reasons == {rows.loc[1, "id"]: "unknown_task_type", rows.loc[2, "id"]: "image_error"}
    assert len(server.chat_requests) == 2
    assert result.stats["passthrough"] == 1


def test_inject_works_inside_a_running_event_loop(openai_params, server, samples, load_image):
    injector = make_injector(openai_params, client_config=_client(server))

    async def from_async_code():
        return injector.inject(samples.head(3), load_image)

    result = asyncio.run(from_async_code())
    assert len(result.pairs) == 3


def test_key_from_environment_when_no_client_config(
    openai_params, server, samples, load_image, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    make_injector(openai_params).inject(samples.head(1), load_image)
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_rejected_answers_differ_from_chosen(openai_params, server, samples, load_image):
    result = make_injector(openai_params, client_config=_client(server)).inject(samples, load_image)
    assert all(
        normalize(r) != normalize(c)
        for r, c in zip(result.pairs["rejected"], result.pairs["answer"], strict=True)
    )


def test_a_run_with_no_pair_says_why_without_pointing_at_an_unwritten_table(
    openai_params, server, samples, load_image, tmp_path, caplog
):
    # The node fails, so its failures output is never saved: the message itself must carry them.
    from povid_kedro.ingest.images import ImageFolder
    from povid_kedro.pipelines.inject_hallucinations.nodes import inject_hallucinations_node

    for path in samples["image"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        load_image(path).save(tmp_path / path)
    server.set_responder(lambda r: Action.error(400))
    with pytest.raises(ValueError) as err:
        inject_hallucinations_node(
            samples.head(6),
            samples.iloc[6:],
            ImageFolder(tmp_path),
            "",
            _client(server),
            None,
            openai_params,
        )
    message = str(err.value)
    assert "no preference pair could be made from 12 samples" in message
    assert "'client_error_400': 12" in message and samples["id"].iloc[0] in message
    assert "failures table" not in message + caplog.text
