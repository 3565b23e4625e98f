"""The bridge's ASGI app: OpenAI's routes over the one gRPC client.

    POST /v1/chat/completions   streaming (SSE, `data: [DONE]`) and not
    GET  /v1/models             the coder models the node serves
    GET  /v1/models/{id}        one of them (openai's `models.retrieve`)
    GET  /health                inference health and tunnel state (no token needed)

Chat goes through `Client` like the agent's own calls: the [inference] coder chain with its
fallbacks for a request that names no model (or names a model of the chain: the rest of the
chain backs it up), the client's error map and hints, its tunnel. The blocking stream is read
on a thread of its own (`agent_node.aio.AsyncStream`). When the HTTP client goes away, streaming
or not, the gRPC call is cancelled and the node stops generating within one step.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from agent_node.aio import AsyncStream
from agent_node.bridge.errors import ApiError, error_body, http_error
from agent_node.bridge.guard import Guard, token_path
from agent_node.bridge.reply import Completion, model_card, stream_error
from agent_node.bridge.request import parse_chat_body
from agent_node.client import Cancellation, Client, GrpcModel, connect
from agent_node.config import AgentConfig
from agent_node.exceptions import InferenceError
from inference_node.api import pb

log = logging.getLogger(__name__)

ROUTES = "POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id} and GET /health"


def _error_response(err: Exception) -> JSONResponse:
    status, body, headers = http_error(err)
    return JSONResponse(body, status_code=status, headers=headers)


def _token_ok(request: Request, token: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    # compare_digest on equal-type bytes runs in time independent of where they differ
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


def chat_events(client: Client, req: pb.ChatRequest, cancel: Cancellation
                ) -> Iterator[pb.ChatEvent]:
    """The Chat stream for `req` (blocking): fail fast when nothing answers, then the chain."""
    client.wait_ready()
    chain = client.cfg.inference.coder
    if req.model and req.model not in chain:  # exactly the model asked for
        return client.streaming(client.stub.Chat, req, f"Chat with {req.model}", req.model,
                                cancel)
    rest = chain[chain.index(req.model):] if req.model else list(chain)
    return GrpcModel(client, rest, "coder").stream_request(req, cancel)


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


async def _sse(events: AsyncStream[pb.ChatEvent], reply: Completion, first: pb.ChatEvent | None,
               include_usage: bool) -> AsyncIterator[bytes]:
    yield reply.chunk({"role": "assistant", "content": ""})
    ev = first
    try:
        while ev is not None:
            chunk = reply.chunks_for(ev)
            if chunk:
                yield chunk
            ev = await events.next()
    except Exception as e:  # noqa: BLE001 - the status line is gone; say it in the stream
        yield stream_error(e)
        return
    yield reply.closing(include_usage)


class _ClientGone(Exception):
    pass


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next_unless_gone(events: AsyncStream[pb.ChatEvent],
                            gone: asyncio.Future[None]) -> pb.ChatEvent | None:
    """The next event; _ClientGone as soon as the HTTP client disconnects."""
    task: asyncio.Future[Any] = asyncio.ensure_future(events.next())
    await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    raise _ClientGone


def create_app(cfg: AgentConfig, client: Client | None = None, *, token: str) -> Guard:
    """The bridge's ASGI app (behind its Guard); connects (and starts the tunnel) on startup
    unless given `client`. `token` is required on /v1/*."""
    if not token:
        raise ValueError("the bridge needs a token (agent_node.bridge.guard.bridge_token)")
    state: dict[str, Client] = {}
    first_seen: dict[str, int] = {}  # a model's `created`: when this bridge first listed it

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

    where = (f"[bridge] token in {cfg.source}" if cfg.bridge.token
             else f"the token file {token_path(cfg)}")

    def authenticate(request: Request) -> None:
        if not _token_ok(request, token):
            raise ApiError(
                "missing or wrong bearer token: send `Authorization: Bearer <token>` (as the API "
                f"key in OpenAI clients) with the token from {where}; docs/bridge.md shows how "
                "for pi, aider and the OpenAI SDK", status=401, code="invalid_api_key")

    # A dependency, not middleware: BaseHTTPMiddleware would sit in every streamed chunk's path.
    authed = [Depends(authenticate)]

    @app.exception_handler(ApiError)
    @app.exception_handler(InferenceError)
    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            msg = f"no route {request.method} {request.url.path}; the bridge serves {ROUTES}"
            return JSONResponse(error_body(msg, "not_found_error"), status_code=exc.status_code)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"),
                            status_code=exc.status_code)

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

    async def coder_cards() -> list[dict[str, Any]]:
        c = state["client"]
        await run_in_threadpool(c.wait_ready)
        now = int(time.time())
        return [model_card(m, first_seen.setdefault(m.name, now))
                for m in await run_in_threadpool(c.list_models) if m.role == "coder"]

    @app.get("/v1/models", dependencies=authed)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": await coder_cards()}

    @app.get("/v1/models/{model_id:path}", dependencies=authed)
    async def model(model_id: str) -> dict[str, Any]:
        cards = await coder_cards()
        for card in cards:
            if card["id"] == model_id:
                return card
        served = ", ".join(c["id"] for c in cards) or "none"
        raise ApiError(f"the inference node serves no coder model {model_id[:200]!r}; it serves "
                       f"{served}", status=404, param="model", code="model_not_found")

    @app.post("/v1/chat/completions", response_model=None, dependencies=authed)
    async def chat_completions(request: Request) -> Response:
        body = parse_chat_body(await request.body())
        req = body.request
        cancel = Cancellation()
        events: AsyncStream[pb.ChatEvent] = AsyncStream(
            lambda: chat_events(state["client"], req, cancel), cancel.cancel, "bridge-chat")
        reply = Completion(req.request_id, req.model)
        gone = asyncio.ensure_future(_until_disconnect(request))
        try:
            # Errors before the first event (unknown model, refused admission) get a real status.
            first = await _next_unless_gone(events, gone)
            if body.stream:
                gone.cancel()  # the streaming response listens for the disconnect itself
                # From here the response owns the call and cancels it however it ends.
                return _SSEResponse(_sse(events, reply, first, body.include_usage), events.close)
            ev = first
            while ev is not None:
                reply.fold.add(ev)
                ev = await _next_unless_gone(events, gone)
        except _ClientGone:
            events.close()
            return Response(status_code=499)  # nobody reads it; stopping the call is what mattered
        except BaseException:
            events.close()
            raise
        finally:
            gone.cancel()
        events.close()
        return JSONResponse(reply.response())

    return Guard(app, int(cfg.bridge.max_body_mb * 2**20), cfg.bridge.allowed_hosts, cfg.source)
