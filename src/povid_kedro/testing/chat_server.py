"""A real OpenAI-compatible Chat Completions server on loopback, scriptable per request.

Tests (and benchmarks) talk to it with the real ``openai`` client over real HTTP, so retries,
timeouts, rate limits and malformed bodies are exercised end to end instead of being mocked.

Behaviour is chosen per request, in this order:

1. actions queued with :meth:`ChatServer.script` (first in, first out, any request);
2. the responder set with :meth:`ChatServer.set_responder` (a function of the request);
3. a fixed answer (``"OK"``).

Every request is recorded (:class:`RecordedRequest`, headers included) before it is answered.

Example::

    with ChatServer() as server:
        server.script(Action.error(429, retry_after=1), Action.answer("fine"))
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_QUOTED = re.compile(r'"""\s*\n?(.*?)\n?\s*"""', re.DOTALL)


@dataclass
class RecordedRequest:
    """One request as the server saw it.

    Attributes:
        index: 0-based arrival order.
        method: HTTP method.
        path: Request path, e.g. ``/v1/chat/completions``.
        headers: Header names lower-cased.
        body: Raw request body.
        json: Parsed body, or ``None`` if it was not JSON.
        received: ``time.monotonic()`` when the body had been read.
        answered: ``time.monotonic()`` when the reply was written (``None`` if never).
        status: HTTP status sent (``None`` for a hang or a dropped connection).
    """

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received: float
    answered: float | None = None
    status: int | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` list of a chat request (empty if absent)."""
        if isinstance(self.json, dict):
            return list(self.json.get("messages") or [])
        return []

    @property
    def user_text(self) -> str:
        """All text parts of all user messages, joined by newlines."""
        parts: list[str] = []
        for msg in self.messages:
            if msg.get("role") != "user":
                continue
            content = msg.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
        return "\n".join(parts)

    @property
    def image_urls(self) -> list[str]:
        """URLs (usually ``data:`` URLs) of all ``image_url`` parts."""
        urls: list[str] = []
        for msg in self.messages:
            content = msg.get("content")
            if isinstance(content, list):
                for p in content:
                    if isinstance(p, dict) and p.get("type") == "image_url":
                        urls.append(str((p.get("image_url") or {}).get("url", "")))
        return urls

    @property
    def quoted(self) -> str | None:
        """The first text between triple double quotes in the user text, if any."""
        match = _QUOTED.search(self.user_text)
        return match.group(1).strip() if match else None


@dataclass
class Action:
    """What the server does with one request.

    Build with the class methods rather than directly.

    Attributes:
        kind: ``answer``, ``error``, ``hang`` or ``malformed``.
        text: Assistant content for ``answer``.
        status: HTTP status for ``error``.
        retry_after: ``Retry-After`` header value (seconds) for ``error``.
        latency: Seconds to wait before replying (``hang``: seconds to hold the connection).
        body: Raw body override (``error`` / ``malformed``).
        usage: ``(prompt_tokens, completion_tokens)``; estimated from lengths when ``None``.
        headers: Extra response headers.
    """

    kind: str
    text: str = ""
    status: int = 200
    retry_after: float | str | None = None
    latency: float = 0.0
    body: bytes | None = None
    usage: tuple[int, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def answer(
        cls, text: str, *, latency: float = 0.0, usage: tuple[int, int] | None = None
    ) -> Action:
        """A normal ``200`` chat completion whose message content is ``text``."""
        return cls("answer", text=text, latency=latency, usage=usage)

    @classmethod
    def refusal(cls, *, latency: float = 0.0) -> Action:
        """A ``200`` completion whose content is a refusal."""
        return cls.answer("I'm sorry, but I can't help with that request.", latency=latency)

    @classmethod
    def wrapped(cls, text: str, *, latency: float = 0.0) -> Action:
        """A ``200`` completion that wraps ``text`` in chatty framing and a code fence."""
        return cls.answer(
            f'Sure! Here is the modified answer:\n\n```\n"{text}"\n```', latency=latency
        )

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        latency: float = 0.0,
        body: bytes | None = None,
    ) -> Action:
        """An HTTP error (e.g. ``429`` with ``Retry-After``, ``500``) with an OpenAI error body."""
        return cls("error", status=status, retry_after=retry_after, latency=latency, body=body)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Action:
        """Hold the connection without answering (the client should time out)."""
        return cls("hang", latency=seconds)

    @classmethod
    def malformed(cls, *, latency: float = 0.0) -> Action:
        """A ``200`` response declared as JSON whose body is truncated JSON."""
        return cls(
            "malformed", latency=latency, body=b'{"id": "chatcmpl-x", "choices": [{"message": '
        )


Responder = Callable[[RecordedRequest], Action]


def rewrite_quoted(transform: Callable[[str], str], *, latency: float = 0.0) -> Responder:
    """A responder that answers with ``transform`` applied to the request's quoted text.

    Prompts that quote the text to rewrite between triple double quotes get a
    "rewritten" answer, as a model would give; requests without a quote get ``"OK"``.

    Args:
        transform: Function of the quoted text.
        latency: Seconds to wait before each reply.

    Returns:
        A responder for :meth:`ChatServer.set_responder`.
    """

    def respond(request: RecordedRequest) -> Action:
        quoted = request.quoted
        return Action.answer(transform(quoted) if quoted else "OK", latency=latency)

    return respond


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) refuses bursts of concurrent connections.
    request_queue_size = 512
    allow_reuse_address = True
    owner: ChatServer


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as real endpoints do; every reply sets Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body would wait for the
    # client's delayed ACK (~40 ms on Linux) and every reply would look slow.
    disable_nagle_algorithm = True
    server: _Server
    # The request being answered; its status is recorded before the reply goes out, so a
    # client that has read the reply always finds the status set.
    _answering: RecordedRequest | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        """Answer ``GET /v1/models`` (some clients probe it); anything else is 404."""
        owner = self.server.owner
        self._answering = None  # a keep-alive connection's earlier POST is answered
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        """Record the request, pick its action and carry it out."""
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = owner._record(self.command, self.path, dict(self.headers.items()), body, parsed)
        self._answering = record
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        action = owner._next_action(record)
        if action.kind == "hang":
            owner._stopping.wait(action.latency)
            # Drop the connection without a reply: the client must rely on its timeout.
            self.close_connection = True
            return
        if action.latency > 0 and owner._stopping.wait(action.latency):
            self.close_connection = True
            return
        self._carry_out(action, record)

    def _carry_out(self, action: Action, record: RecordedRequest) -> None:
        owner = self.server.owner
        if action.kind == "malformed":
            self._send_raw(200, action.body or b"{", {"Content-Type": "application/json"})
            return
        if action.kind == "error":
            headers = dict(action.headers)
            if action.retry_after is not None:
                headers["Retry-After"] = str(action.retry_after)
            body = (
                action.body
                or json.dumps(
                    {
                        "error": {
                            "message": f"scripted error {action.status}",
                            "type": "rate_limit_error" if action.status == 429 else "server_error",
                            "code": None,
                        }
                    }
                ).encode()
            )
            headers.setdefault("Content-Type", "application/json")
            self._send_raw(action.status, body, headers)
            return
        prompt_tokens, completion_tokens = action.usage or (
            len(record.user_text) // 4 + 85 * len(record.image_urls) + 8,
            max(1, len(action.text) // 4),
        )
        payload = {
            "id": f"chatcmpl-{record.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": (record.json or {}).get("model", owner.model)
            if isinstance(record.json, dict)
            else owner.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": action.text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        self._send(200, payload, action.headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(
            status,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _send_raw(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self._answering is not None:
            self._answering.status, self._answering.answered = status, time.monotonic()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout): nothing to deliver.
            self.close_connection = True


class ChatServer:
    """Threaded OpenAI Chat Completions server on ``127.0.0.1`` with a random port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.

    Args:
        model: Model name reported by ``GET /v1/models`` and echoed when a request has none.
        latency: Default latency added to actions built by the default responder.
    """

    def __init__(self, *, model: str = "test-model", latency: float = 0.0) -> None:
        self.model = model
        self.latency = latency
        self._lock = threading.Lock()
        self._queue: list[Action] = []
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ChatServer:
        """Bind a random loopback port and serve in a background thread."""
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging handlers are released at once."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Base URL for an OpenAI client, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ scripting
    def script(self, *actions: Action | Iterable[Action]) -> None:
        """Queue actions for the next requests, in arrival order."""
        with self._lock:
            for action in actions:
                if isinstance(action, Action):
                    self._queue.append(action)
                else:
                    self._queue.extend(action)

    def set_responder(self, responder: Responder | None) -> None:
        """Decide each request's action with ``responder`` once the queue is empty."""
        with self._lock:
            self._responder = responder

    def reset(self) -> None:
        """Forget recorded requests, queued actions and the responder."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._responder = None

    # ------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of all recorded requests, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded ``POST .../chat/completions`` requests."""
        return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    # ------------------------------------------------------------------ internals
    def _record(
        self, method: str, path: str, headers: dict[str, str], body: bytes, parsed: Any
    ) -> RecordedRequest:
        with self._lock:
            record = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=path,
                headers={k.lower(): v for k, v in headers.items()},
                body=body,
                json=parsed,
                received=time.monotonic(),
            )
            self._requests.append(record)
            return record

    def _next_action(self, record: RecordedRequest) -> Action:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            responder = self._responder
        if responder is not None:
            return responder(record)
        return Action.answer("OK", latency=self.latency)
