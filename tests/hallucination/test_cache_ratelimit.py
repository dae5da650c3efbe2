"""The answer cache (crash-safe JSONL) and the rate-limit helpers."""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import formatdate

import pytest

from povid_kedro.hallucination.cache import InjectionCache, cache_key
from povid_kedro.hallucination.ratelimit import (
    RateLimiter,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
)

KEY_FIELDS = {
    "model": "m",
    "prompt_version": "v1",
    "hallucination_type": "attribute",
    "sample_id": "s1",
    "image_hash": "i",
    "answer_hash": "a",
}


def test_cache_key_depends_on_every_field():
    base = cache_key(**KEY_FIELDS)
    assert len(base) == 64
    for name in KEY_FIELDS:
        assert cache_key(**{**KEY_FIELDS, name: "other"}) != base


def test_cache_round_trip_and_torn_last_line(tmp_path, caplog):
    cache = InjectionCache(tmp_path / "c")
    cache.put("k1", {"status": "ok", "text": "one"})
    cache.put("k2", {"status": "ok", "text": "two"})
    cache.close()
    # A run killed in the middle of a write leaves half a record.
    with (tmp_path / "c" / "entries.jsonl").open("ab") as fh:
        fh.write(b'{"key": "k3", "status": "ok", "te')

    reopened = InjectionCache(tmp_path / "c")
    assert sorted(reopened.keys()) == ["k1", "k2"]
    assert reopened.skipped_lines == 1
    assert "skipping unreadable line 3" in caplog.text
    reopened.put("k4", {"status": "ok", "text": "four"})
    reopened.close()

    again = InjectionCache(tmp_path / "c")
    assert sorted(again.keys()) == ["k1", "k2", "k4"]
    assert again.get("k4")["text"] == "four"
    lines = (tmp_path / "c" / "entries.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "k4"


def test_cache_creates_its_folder_and_last_write_wins(tmp_path):
    cache = InjectionCache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and len(cache) == 0
    cache.put("k", {"text": "old"})
    cache.put("k", {"text": "new"})
    assert InjectionCache(tmp_path / "a" / "b").get("k")["text"] == "new"


def test_token_bucket_with_a_fake_clock():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=lambda: now[0])
    for _ in range(4):
        assert bucket.wait_time(1) == 0
        bucket.take(1)
    assert bucket.wait_time(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.wait_time(2) == 0
    # Larger than the bucket: allowed when full, then paid back.
    now[0] = 10.0
    assert bucket.wait_time(10) == 0
    bucket.take(10)
    assert bucket.wait_time(1) == pytest.approx((1 + 6) / 2)


def test_rate_limiter_paces_requests():
    limiter = RateLimiter(rpm=1200, burst_seconds=0.1)  # 20/s, burst 2

    async def go():
        t0 = time.monotonic()
        for _ in range(12):
            await limiter.acquire()
        return time.monotonic() - t0

    assert asyncio.run(go()) >= (12 - 2) / 20 - 0.02


def test_pause_holds_every_request():
    limiter = RateLimiter()

    async def go():
        limiter.pause_until(time.monotonic() + 0.3)
        t0 = time.monotonic()
        await asyncio.gather(*(limiter.acquire() for _ in range(3)))
        return time.monotonic() - t0

    assert asyncio.run(go()) >= 0.29


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_3s = parse_retry_after({"retry-after": formatdate(time.time() + 3, usegmt=True)})
    assert in_3s is not None and 1.5 < in_3s <= 3.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_grows_with_jitter_and_cap():
    import random

    rng = random.Random(0)
    for attempt in range(6):
        delay = backoff_delay(attempt, base=1.0, cap=8.0, rng=rng)
        full = min(8.0, 2.0**attempt)
        assert full / 2 <= delay <= full
