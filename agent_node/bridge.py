"""`agent-node bridge`: the inference node as an OpenAI chat-completions endpoint on loopback.

    agent-node bridge [--config FILE] [--port 8080] [--host 127.0.0.1] [--allow-remote]

    POST /v1/chat/completions   streaming (SSE, `data: [DONE]`) and not; text, images, tools,
                                response_format, sampling; reasoning as `reasoning_content`
    GET  /v1/models             the coder models the node serves
    GET  /health                inference health and tunnel state (no token needed)

Requests go through the one gRPC client (and its managed tunnel), so prompts and code never leave
the building. gRPC errors become `agent_node.exceptions` errors in `client.map_grpc_error`, and
those become HTTP here, once, in `http_error`. A stream is read by a thread that pushes events to
the event loop; when the HTTP client goes away, Starlette cancels the response and the gRPC call
is cancelled with it, so the node stops generating within one step.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from agent_node.client import (
    Client,
    connect,
    map_grpc_error,
    to_pb_message,
    to_pb_response_format,
    to_pb_tool,
    to_pb_tool_choice,
)
from agent_node.config import DEFAULT_CONFIG, AgentConfig, ConfigError, load_default_config
from agent_node.exceptions import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    InferenceUnavailable,
    ModelLoadFailed,
    ModelNotFound,
    QueueFull,
    TunnelFailed,
    WouldNotFit,
)
from agent_node.tunnel import FAILED
from inference_node.api import pb

log = logging.getLogger(__name__)

# Seconds a client is told to wait: a full queue drains fast; memory frees when a reply ends.
RETRY_AFTER_QUEUE_S = 1
RETRY_AFTER_MEMORY_S = 5
RETRY_AFTER_UNAVAILABLE_S = 2
_END = object()


# ---------------------------------------------------------------------- errors → HTTP, once


class BridgeError(Exception):
    """A request the bridge itself refuses, before anything reaches the inference node."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


# (error class, HTTP status, OpenAI error type, Retry-After seconds); first match wins.
HTTP_ERRORS: list[tuple[type[InferenceError], int, str, int | None]] = [
    (BadRequest, 400, "invalid_request_error", None),
    (ModelNotFound, 404, "invalid_request_error", None),
    (QueueFull, 429, "rate_limit_error", RETRY_AFTER_QUEUE_S),
    (WouldNotFit, 503, "server_error", RETRY_AFTER_MEMORY_S),
    (DeadlineExceeded, 504, "timeout_error", None),
    (TunnelFailed, 503, "server_error", None),  # needs a person, not a retry
    (InferenceUnavailable, 503, "server_error", RETRY_AFTER_UNAVAILABLE_S),
    (ModelLoadFailed, 500, "server_error", None),
]


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def http_error(err: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error body, headers) for an error from the bridge or the node."""
    if isinstance(err, BridgeError):
        kind = {401: "authentication_error", 404: "not_found_error"}.get(
            err.status, "invalid_request_error")
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        return err.status, error_body(err.message, kind, err.param, err.code), headers
    if isinstance(err, InferenceError):
        for cls, status, kind, retry in HTTP_ERRORS:
            if isinstance(err, cls):
                param = "model" if isinstance(err, ModelNotFound) else None
                code = "model_not_found" if isinstance(err, ModelNotFound) else (
                    err.code.lower() or None)
                headers = {"Retry-After": str(retry)} if retry is not None else {}
                return status, error_body(err.message, kind, param, code), headers
        return 502, error_body(err.message, "server_error", None, err.code.lower() or None), {}
    log.exception("bridge: unexpected error", exc_info=err)
    return 500, error_body(f"the bridge failed: {type(err).__name__}: {err}; see the bridge's "
                           "log", "server_error"), {}


def _error_response(err: Exception) -> JSONResponse:
    status, body, headers = http_error(err)
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------- request translation


class ChatCompletionRequest(BaseModel):
    """The chat-completions fields the bridge understands; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None


def _image_bytes(part: dict[str, Any], where: str) -> bytes:
    url = part.get("image_url")
    url = url.get("url", "") if isinstance(url, dict) else url or ""
    if not url.startswith("data:"):
        raise BridgeError(f"{where}: image_url must be a data URL (data:image/png;base64,...); "
                          "the bridge never fetches URLs, so nothing leaves the building",
                          param=where)
    head, _, data = url.partition(",")
    if not head.endswith(";base64"):
        raise BridgeError(f"{where}: the image data URL must be base64 encoded", param=where)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BridgeError(f"{where}: the image data URL is not valid base64",
                          param=where) from None


def _message(m: dict[str, Any], i: int) -> pb.Message:
    where = f"messages[{i}]"
    role = m.get("role")
    if role == "developer":  # the newer name for system
        m = {**m, "role": "system"}
    content = m.get("content")
    images: list[bytes] = []
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                images.append(_image_bytes(part, f"{where}.content[{j}]"))
            elif kind != "text":
                raise BridgeError(f"{where}.content[{j}]: unsupported part type {kind!r}; send "
                                  "text or image_url parts", param=f"{where}.content")
    elif content is not None and not isinstance(content, str):
        raise BridgeError(f"{where}.content must be a string or a list of parts",
                          param=f"{where}.content")
    try:
        return to_pb_message({**m, "images": images})
    except (KeyError, TypeError, AttributeError) as e:
        raise BridgeError(f"{where}: malformed message ({e})", param=where) from None


def to_chat_request(body: ChatCompletionRequest, default_model: str) -> pb.ChatRequest:
    """The gRPC ChatRequest for a chat-completions body; BridgeError names a bad field."""
    if body.n not in (None, 1):
        raise BridgeError(f"n={body.n} is not supported: the bridge returns one choice",
                          param="n")
    if body.logprobs:
        raise BridgeError("logprobs are not supported by the bridge", param="logprobs")
    tools = []
    for i, t in enumerate(body.tools or []):
        if t.get("type", "function") != "function" or "name" not in t.get("function", {}):
            raise BridgeError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                              "{\"name\": ..., \"parameters\": {...}}}", param=f"tools[{i}]")
        tools.append(to_pb_tool(t))
    try:
        tool_choice = to_pb_tool_choice(body.tool_choice)
    except (KeyError, TypeError):
        raise BridgeError("tool_choice must be auto, none, required or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", param="tool_choice") from None
    rf = body.response_format
    if rf is not None and rf.get("type") not in ("text", "json_object", "json_schema"):
        raise BridgeError(f"response_format type {rf.get('type')!r} is not one of text, "
                          "json_object, json_schema", param="response_format")
    if rf is not None and rf.get("type") == "json_schema" and not isinstance(
            rf.get("json_schema"), dict):
        raise BridgeError("response_format json_schema needs {\"json_schema\": {\"name\": ..., "
                          "\"schema\": {...}}}", param="response_format")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    sampling = pb.Sampling(stop=stop)
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(sampling, name, value)
    req = pb.ChatRequest(
        model=body.model or default_model,
        messages=[_message(m, i) for i, m in enumerate(body.messages)],
        tools=tools,
        tool_choice=tool_choice,
        response_format=to_pb_response_format(rf),
        sampling=sampling,
        request_id=uuid.uuid4().hex,
    )
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        req.max_tokens = max_tokens
    return req


# ---------------------------------------------------------------------- the gRPC stream


class ChatStream:
    """One Chat call read by a thread; events (or the mapped error) handed to the event loop."""

    def __init__(self, client: Client, req: pb.ChatRequest) -> None:
        self.client = client
        self.model = req.model
        self.during = f"Chat with {req.model or 'the default coder'}"
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._call = client.stub.Chat(req, timeout=client.cfg.inference.timeout_s,
                                      wait_for_ready=True)
        threading.Thread(target=self._pump, name="bridge-chat", daemon=True).start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the bridge is shutting down
            self._call.cancel()

    def _pump(self) -> None:
        try:
            for ev in self._call:
                self._put(ev)
        except grpc.RpcError as e:
            self._put(map_grpc_error(e, target=self.client.target, model=self.model,
                                     tunnel=self.client.tunnel, during=self.during))
        except Exception as e:  # noqa: BLE001 - handed to the request, which reports it
            self._put(e)
        finally:
            self._put(_END)

    async def next(self) -> pb.ChatEvent | None:
        """The next event; None at the end; raises the mapped error."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()


async def _ensure_ready(client: Client) -> None:
    """Fail fast with 503 when nothing answers, instead of waiting out the whole deadline."""
    if client.channel_state == grpc.ChannelConnectivity.READY:
        return
    wait = client.cfg.inference.connect_timeout_s
    ready = grpc.channel_ready_future(client.channel)
    try:
        await run_in_threadpool(ready.result, wait)
    except grpc.FutureTimeoutError:
        ready.cancel()
        if client.tunnel is not None:
            st = client.tunnel.status()
            if st.state == FAILED:
                raise TunnelFailed(f"the SSH tunnel has stopped: {st.why}", why=st.why) from None
            where = st.describe()
            hint = ("the tunnel rebuilds by itself; retry shortly, and if it keeps failing check "
                    "sshd and `inference-node serve` on the host (`agent-node status`)")
        else:
            where = client.target
            hint = ("is `inference-node serve` running, and does [inference] target in "
                    f"{client.cfg.source} point at it? (`agent-node status`)")
        raise InferenceUnavailable(f"the inference node did not answer at {where} within "
                                   f"{wait:g} s; {hint}", code="UNAVAILABLE") from None


# ---------------------------------------------------------------------- chat-completions shapes


def _tool_call_json(tc: pb.ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tc.id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                           "function": {"name": tc.name, "arguments": tc.arguments_json or "{}"}}
    return out if index is None else {"index": index, **out}


def _usage(done: pb.Done | None) -> dict[str, Any] | None:
    if done is None:
        return None
    u = done.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


class _Completion:
    """What the stream said so far, folded into chat-completions fields."""

    def __init__(self, req: pb.ChatRequest) -> None:
        self.id = f"chatcmpl-{req.request_id}"
        self.created = int(time.time())
        self.model = req.model
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[pb.ToolCall] = []
        self.done: pb.Done | None = None

    def fold(self, ev: pb.ChatEvent) -> None:
        kind = ev.WhichOneof("event")
        if kind == "admitted":
            self.model = ev.admitted.model or self.model
        elif kind == "delta":
            reasoning = ev.delta.kind == pb.Delta.REASONING
            (self.reasoning if reasoning else self.content).append(ev.delta.text)
        elif kind == "tool_call":
            self.tool_calls.append(ev.tool_call)
        elif kind == "done":
            self.done = ev.done
            self.model = ev.done.model or self.model

    @property
    def finish_reason(self) -> str:
        if self.done is None:
            return "stop"
        return self.done.finish_reason or ("tool_calls" if self.tool_calls else "stop")

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant",
                               "content": "".join(self.content) or None}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            msg["tool_calls"] = [_tool_call_json(tc) for tc in self.tool_calls]
        elif msg["content"] is None:
            msg["content"] = ""
        return msg

    def response(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "message": self.message(),
                                  "finish_reason": self.finish_reason, "logprobs": None}
        if self.done is not None and self.done.cut_off_while_reasoning:
            choice["cut_off_while_reasoning"] = True
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [choice], "usage": _usage(self.done)}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                             "logprobs": None}]}
        return _sse(body)


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class _SSEResponse(StreamingResponse):
    """A streaming response whose gRPC call is cancelled however the response ends."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _events(stream: ChatStream, comp: _Completion, first: pb.ChatEvent | None,
                  include_usage: bool) -> AsyncIterator[bytes]:
    yield comp.chunk({"role": "assistant", "content": ""})
    tool_index = 0
    ev = first
    try:
        while ev is not None:
            comp.fold(ev)
            kind = ev.WhichOneof("event")
            if kind == "delta" and ev.delta.text:
                key = "reasoning_content" if ev.delta.kind == pb.Delta.REASONING else "content"
                yield comp.chunk({key: ev.delta.text})
            elif kind == "tool_call":
                yield comp.chunk({"tool_calls": [_tool_call_json(ev.tool_call, tool_index)]})
                tool_index += 1
            ev = await stream.next()
    except Exception as e:  # noqa: BLE001 - the status line is gone; say it in the stream
        status, body, _ = http_error(e)
        body["error"]["status"] = status
        yield _sse(body)
        return
    yield comp.chunk({}, comp.finish_reason)
    if include_usage:
        yield _sse({"id": comp.id, "object": "chat.completion.chunk", "created": comp.created,
                    "model": comp.model, "choices": [], "usage": _usage(comp.done)})
    yield b"data: [DONE]\n\n"


# ---------------------------------------------------------------------- the app


def _token_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    expected = token.encode()
    # compare_digest on equal-type bytes runs in time independent of where they differ
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected)


def create_app(cfg: AgentConfig, client: Client | None = None) -> FastAPI:
    """The bridge's ASGI app; connects (and starts the tunnel) on startup unless given `client`."""
    state: dict[str, Client] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = client is None
        state["client"] = client if client is not None else await run_in_threadpool(connect, cfg)
        try:
            yield
        finally:
            if own:
                state["client"].close()

    app = FastAPI(title="studio-coder bridge", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    token = cfg.bridge.token
    default_model = cfg.inference.coder[0] if cfg.inference.coder else ""

    def authenticate(request: Request) -> None:
        if token and not _token_ok(request, token):
            raise BridgeError(
                "missing or wrong bearer token: send `Authorization: Bearer <token>` with the "
                f"token from [bridge] token in {cfg.source} (OpenAI SDK: api_key=<token>)",
                status=401, code="invalid_api_key")

    # A dependency, not middleware: BaseHTTPMiddleware would sit in every streamed chunk's path.
    authed = [Depends(authenticate)]

    @app.exception_handler(BridgeError)
    @app.exception_handler(InferenceError)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = f"{param or 'the request body'}: {first.get('msg', 'invalid')}"
        return _error_response(BridgeError(msg, param=param))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        msg = (f"no route {request.method} {request.url.path}; the bridge serves "
               "POST /v1/chat/completions, GET /v1/models and GET /health")
        kind = "not_found_error" if exc.status_code in (404, 405) else "invalid_request_error"
        return JSONResponse(error_body(msg if exc.status_code in (404, 405) else str(exc.detail),
                                       kind), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        c = state["client"]
        tunnel = c.tunnel.status().describe() if c.tunnel is not None else None
        try:
            status = await run_in_threadpool(c.health, cfg.inference.connect_timeout_s)
        except InferenceError as e:
            return JSONResponse({"status": "unavailable", "inference": None, "tunnel": tunnel,
                                 "error": e.message}, status_code=503)
        ok = status == "SERVING"
        return JSONResponse({"status": "ok" if ok else "unavailable", "inference": status,
                             "tunnel": tunnel}, status_code=200 if ok else 503)

    @app.get("/v1/models", dependencies=authed)
    async def models() -> dict[str, Any]:
        c = state["client"]
        await _ensure_ready(c)
        served = await run_in_threadpool(c.list_models)
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": int(m.last_used_unix),
             "owned_by": "studio-coder", "context_length": m.context_length,
             "loaded": m.state == pb.ModelInfo.LOADED}
            for m in served if m.role == "coder"]}

    @app.post("/v1/chat/completions", response_model=None, dependencies=authed)
    async def chat_completions(body: ChatCompletionRequest,
                               request: Request) -> Response:
        c = state["client"]
        req = to_chat_request(body, default_model)
        await _ensure_ready(c)
        stream = ChatStream(c, req)
        comp = _Completion(req)
        try:
            # Errors before the first event (unknown model, refused admission) get a real status.
            first = await _next_unless_gone(stream, request)
            if body.stream:
                include_usage = bool((body.stream_options or {}).get("include_usage"))
                # From here the response owns the call and cancels it however it ends.
                return _SSEResponse(_events(stream, comp, first, include_usage), stream.cancel)
            ev = first
            while ev is not None:
                comp.fold(ev)
                ev = await _next_unless_gone(stream, request)
        except _ClientGone:
            stream.cancel()
            return Response(status_code=499)  # nobody reads it; the call is what mattered
        except BaseException:
            stream.cancel()
            raise
        stream.cancel()
        return JSONResponse(comp.response())

    return app


class _ClientGone(Exception):
    pass


async def _next_unless_gone(stream: ChatStream, request: Request) -> pb.ChatEvent | None:
    """The next event; _ClientGone when the HTTP client disconnects while we wait for it."""
    task = asyncio.ensure_future(stream.next())
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise _ClientGone


# ---------------------------------------------------------------------- running it


def check_host(host: str, allow_remote: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ValueError(
            f"refusing to listen on {host}: the bridge speaks plain HTTP and anyone who reaches "
            "it can send prompts to the appliance (with no password unless [bridge] token is "
            "set). Keep it on 127.0.0.1 and reach it over SSH (ssh -L 8080:127.0.0.1:8080); "
            "pass --allow-remote only if you mean to expose it on your network")


class BridgeServer:
    """uvicorn serving `app` in a thread on an already-bound socket (port 0 picks a free one)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="bridge-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> BridgeServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent-node bridge",
                                 description="OpenAI-compatible endpoint for the inference node")
    ap.add_argument("--config", help=f"agent-node.toml (default {DEFAULT_CONFIG} if present)")
    ap.add_argument("--host", help="address to listen on (default [bridge] host, 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (default [bridge] port, 8080)")
    ap.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host (plain HTTP: set [bridge] token)")
    args = ap.parse_args(argv)
    try:
        cfg = load_default_config(args.config)
        host = args.host or cfg.bridge.host
        port = cfg.bridge.port if args.port is None else args.port
        check_host(host, args.allow_remote)
    except (ConfigError, ValueError) as e:
        print(f"agent-node bridge: {e}", file=sys.stderr)
        return 2
    if args.allow_remote and not cfg.bridge.token:
        print("agent-node bridge: warning: listening beyond loopback with no [bridge] token; "
              "anyone who reaches the port can use the appliance", file=sys.stderr)
    try:
        client = connect(cfg)
    except TunnelFailed as e:
        print(f"agent-node bridge: {e}", file=sys.stderr)
        return 3
    with client:
        try:
            server = BridgeServer(create_app(cfg, client), host, port)
        except OSError as e:
            print(f"agent-node bridge: cannot listen on {host}:{port} ({e.strerror}); pick "
                  "another --port or stop what uses it", file=sys.stderr)
            return 2
        print(f"agent-node bridge: OpenAI-compatible API at {server.url} -> {client.target}"
              f"{' (token required)' if cfg.bridge.token else ''}", file=sys.stderr)
        server.server.run(sockets=[server.sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
