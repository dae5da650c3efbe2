"""Client-side rate limits and retry timing for API calls.

Providers limit requests per minute (RPM) and tokens per minute (TPM). Staying under both
avoids most 429s; the ones that still come carry ``Retry-After``, which pauses every request,
not just the one that got it (the limit is per account, not per request).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Mapping


class TokenBucket:
    """A token bucket: ``rate`` units per second, at most ``capacity`` banked.

    The level may go negative: a request larger than the whole bucket is let through when the
    bucket is full and then has to be paid back, instead of waiting forever.

    Args:
        rate: Units added per second.
        capacity: Largest level (the burst).
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be > 0")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` could be taken (0 if it can be taken now)."""
        self._refill()
        needed = min(amount, self.capacity)
        if self._level >= needed:
            return 0.0
        return (needed - self._level) / self.rate

    def take(self, amount: float) -> None:
        """Take ``amount`` (call after :meth:`wait_time` returned 0)."""
        self._refill()
        self._level -= amount

    def give(self, amount: float) -> None:
        """Return (or, negative, charge) units after the true cost became known."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits plus a shared pause, for asyncio.

    Args:
        rpm: Requests per minute; ``None`` or 0 for none.
        tpm: Tokens per minute; ``None`` or 0 for none.
        burst_seconds: Bucket depth in seconds of rate: with ``rpm=600`` and 1 s, at most 10
            requests start at once, then 10 per second.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.requests = (
            TokenBucket(rpm / 60.0, max(1.0, rpm / 60.0 * burst_seconds), clock) if rpm else None
        )
        self.tokens = (
            TokenBucket(tpm / 60.0, max(1.0, tpm / 60.0 * burst_seconds), clock) if tpm else None
        )
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None

    def pause_until(self, when: float) -> None:
        """Hold every request until monotonic time ``when`` (a later pause extends it)."""
        self._paused_until = max(self._paused_until, when)

    async def acquire(self, tokens: float = 0.0) -> float:
        """Wait until one request of ``tokens`` estimated tokens may start.

        Args:
            tokens: Estimated tokens of the request (prompt + completion).

        Returns:
            Seconds spent waiting.
        """
        if self._lock is None:
            # Created lazily: the lock belongs to the running loop.
            self._lock = asyncio.Lock()
        start = self._clock()
        # One waiter at a time keeps the order fair (FIFO on the lock) and the buckets exact.
        async with self._lock:
            while True:
                now = self._clock()
                wait = max(0.0, self._paused_until - now)
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_time(1))
                if self.tokens is not None and tokens > 0:
                    wait = max(wait, self.tokens.wait_time(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None and tokens > 0:
                self.tokens.take(tokens)
        return self._clock() - start

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the token bucket once the real usage of a request is known."""
        if self.tokens is not None:
            self.tokens.give(estimated - actual)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date).

    Args:
        headers: Response headers (case-insensitive mapping, e.g. ``httpx.Headers``).

    Returns:
        The delay in seconds, or ``None`` when absent or unreadable.
    """
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())
    return None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    Args:
        attempt: 0 for the first retry.
        base: Delay of the first retry before jitter.
        cap: Largest delay.
        rng: Random source (the module's by default).

    Returns:
        Seconds in ``[d/2, d]`` with ``d = min(cap, base * 2**attempt)``: never zero, so
        clients that failed together do not retry together.
    """
    delay = min(cap, base * (2**attempt))
    return delay / 2 + (rng or random).uniform(0, delay / 2)
