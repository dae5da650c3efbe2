"""The loopback chat server itself: concurrency, scripting, recording."""

from __future__ import annotations

import asyncio
import time

import openai

from povid_kedro.testing.chat_server import Action, ChatServer


def test_serves_48_concurrent_requests_in_parallel():
    with ChatServer(latency=0.3) as server:

        async def go() -> float:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            t0 = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"q{i}"}]
                    )
                    for i in range(48)
                )
            )
            elapsed = time.perf_counter() - t0
            await client.close()
            assert {r.choices[0].message.content for r in replies} == {"OK"}
            return elapsed

        elapsed = asyncio.run(go())
        # Sequential would take 48 x 0.3 = 14.4 s; a quarter of that leaves room for a loaded
        # machine and still fails for a server that handles a few requests at a time.
        assert elapsed < 0.3 * 48 / 4
        assert len(server.chat_requests) == 48


def test_script_then_responder_and_recording():
    with ChatServer() as server:
        server.script(Action.error(503, retry_after=2), Action.answer("first"))
        server.set_responder(lambda r: Action.answer(f"echo {r.user_text}"))
        client = openai.OpenAI(base_url=server.base_url, api_key="secret", max_retries=0)
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        except openai.APIStatusError as err:
            assert err.status_code == 503 and err.response.headers["retry-after"] == "2"
        texts = [
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": c}])
            .choices[0]
            .message.content
            for c in ("b", "c")
        ]
        assert texts == ["first", "echo c"]
        first = server.requests[0]
        assert first.headers["authorization"] == "Bearer secret"
        assert first.json["messages"][0]["content"] == "a"
        assert [r.status for r in server.requests] == [503, 200, 200]
        server.reset()
        assert server.requests == []
