"""The OpenAI-compatible HTTP application: routes, authentication, streaming, errors.

FastAPI validates request bodies against `unite_logits.serving.schemas` (a bad one is a 400
with an OpenAI-style error body, and the server carries on), the generation itself runs on
the `GenerationWorker` thread, and results come back to the event loop through an
``asyncio.Queue``. Streaming responses are server-sent events in the OpenAI chunk format,
ending with ``data: [DONE]``. A client that disconnects cancels its job: a streamed one at
once (Starlette cancels the stream), a plain one within half a second (polled).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..prompt_checks import PromptTooLongError
from ..token_stream import Piece, StreamedResult
from . import openai_format as fmt
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from .worker import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH, GenerationWorker, Job

__all__ = ["ServerSettings", "create_app", "OpenAIError"]

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5


@dataclass(frozen=True)
class ServerSettings:
    """What the server calls its model, the API key it requires (None: none), the default
    max_tokens, and how requests are batched (`GenerationWorker`)."""

    model_name: str
    api_key: str | None = None
    default_max_tokens: int = 256
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S


class OpenAIError(Exception):
    """An error answered as ``{"error": {...}}`` with its HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = fmt.error_body(message, type_, param, code)


class _ClientGone(Exception):
    pass


class _Run:
    """One submitted job, seen from the event loop: its events arrive on an asyncio queue."""

    def __init__(self, worker: GenerationWorker, request_id: str, prompts: Sequence[Any], chat: bool,
                 body: SamplingFields, top_logprobs: int | None, settings: ServerSettings) -> None:
        self.prompt_param = "messages" if chat else "prompt"
        self.has_started = False
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        try:
            options = body.options(settings.default_max_tokens, top_logprobs)
        except ValueError as error:
            raise OpenAIError(400, str(error)) from None
        self.job = Job(request_id, list(prompts), chat, options, self._notify, seed=body.seed)
        worker.submit(self.job)

    def _notify(self, kind: str, index: int, payload: Any) -> None:  # called on the worker thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, index, payload))
        except RuntimeError:  # the event loop is gone (server shutting down): stop generating
            self.job.cancel.set()

    def cancel(self) -> None:
        self.job.cancel.set()

    async def started(self, request: Request) -> None:
        """Wait until the worker takes the job; a prompt it refuses is a 400 (nothing was sent yet)."""
        async for kind, _, payload in self.events_until_end(request, until="started"):
            if kind == "rejected":
                code = "context_length_exceeded" if isinstance(payload, PromptTooLongError) else "invalid_value"
                raise OpenAIError(400, str(payload), param=self.prompt_param, code=code)
        if not self.has_started:  # ended unstarted: cancelled while it waited
            raise _ClientGone()

    async def events_until_end(self, request: Request | None = None,
                               until: str = "end") -> AsyncIterator[tuple[str, int, Any]]:
        """Pieces and per-choice results until the job ends; with ``request``, watch for a disconnect."""
        checked = time.monotonic()
        while True:
            try:
                kind, index, payload = await asyncio.wait_for(
                    self.events.get(), timeout=DISCONNECT_POLL_S if request is not None else None
                )
            except asyncio.TimeoutError:
                kind = ""
            if request is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel()
                    raise _ClientGone()
            if not kind:
                continue
            if kind == "error":
                raise OpenAIError(500, f"generation failed: {payload}", "server_error")
            if kind == "started":
                self.has_started = True
                if until == "started":
                    return
                continue
            if kind == "end":
                return
            yield kind, index, payload
            if kind == "rejected":
                return

    async def results(self, request: Request) -> list[StreamedResult]:
        done: dict[int, StreamedResult] = {}
        async for kind, index, payload in self.events_until_end(request):
            if kind == "done":
                done[index] = _not_cancelled(payload)
        return [done[i] for i in sorted(done)]


def create_app(ensemble: Any, settings: ServerSettings, worker: GenerationWorker | None = None) -> FastAPI:
    """The application for ``ensemble``; its generation worker stops when the app shuts down."""
    worker = worker or GenerationWorker(ensemble, max_batch=settings.max_batch, batch_wait_s=settings.batch_wait_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(worker.close)

    app = FastAPI(title="unite-logits", summary="OpenAI-compatible API of a token-level ensemble", lifespan=lifespan)
    app.state.worker = worker
    app.state.settings = settings

    # -- errors: always {"error": {...}} ------------------------------------------------
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif first.get("type") == "missing":
            message = f"{param} is required"
        elif param:
            message = f"{param}: {message}"
        return JSONResponse(fmt.error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return JSONResponse(fmt.error_body(str(error.detail), code=code), status_code=error.status_code)

    # -- authentication ------------------------------------------------------------------
    async def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise OpenAIError(401, "Incorrect or missing API key (send it as 'Authorization: Bearer KEY').",
                              code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise OpenAIError(400, f"The model '{name}' does not exist; this server has '{settings.model_name}'.",
                              param="model", code="model_not_found")

    model_card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "unite-logits",
                  "members": [m.name for m in ensemble.models], "weights": list(ensemble.weights),
                  "top_k": ensemble.top_k}

    # -- routes --------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": worker.waiting}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorized)])
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise OpenAIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return model_card

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        run = _Run(worker, request_id, [body.template_messages()] * body.n, True, body, body.wanted_top_logprobs,
                   settings)
        answer = await _answer(run, request,
                               _chat_chunks(run, body, request_id, created=int(time.time())) if body.stream else None)
        if not isinstance(answer, list):
            return answer
        results = answer
        choices = [
            {"index": i, "message": {"role": "assistant", "content": r.text},
             "logprobs": fmt.chat_logprobs(r.logprobs) if body.logprobs else None,
             "finish_reason": fmt.finish_reason(r)}
            for i, r in enumerate(results)
        ]
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": body.model,
                "choices": choices, "usage": _usage(results, prompts=1)}

    @app.post("/v1/completions", dependencies=[Depends(authorized)], response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        prompts = [p for p in body.prompts for _ in range(body.n)]
        run = _Run(worker, request_id, prompts, False, body, body.logprobs, settings)
        answer = await _answer(run, request,
                               _completion_chunks(run, body, request_id, created=int(time.time())) if body.stream else None)
        if not isinstance(answer, list):
            return answer
        results = answer
        choices = [
            {"index": i, "text": r.text,
             "logprobs": fmt.completion_logprobs(r.logprobs) if body.logprobs is not None else None,
             "finish_reason": fmt.finish_reason(r)}
            for i, r in enumerate(results)
        ]
        return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": body.model,
                "choices": choices, "usage": _usage(results, prompts=len(body.prompts))}

    return app


async def _answer(run: _Run, request: Request,
                  stream: AsyncIterator[str] | None) -> StreamingResponse | JSONResponse | list[StreamedResult]:
    """Once the worker starts ``run``: the event stream (``stream`` given) or every choice's result;
    a 499 when the client left first."""
    try:
        await run.started(request)
        if stream is not None:
            return _event_stream(stream, run)
        return await run.results(request)
    except _ClientGone:
        return JSONResponse(fmt.error_body("client disconnected"), status_code=499)


def _not_cancelled(result: StreamedResult) -> StreamedResult:
    """A generation cancelled while its client is still there: the server is shutting down."""
    if result.finish_reason == "cancelled":
        raise OpenAIError(503, "the server is shutting down; the answer was cut short", "server_error",
                          code="server_shutdown")
    return result


def _usage(results: Sequence[StreamedResult], prompts: int) -> dict[str, int]:
    """Each distinct prompt counted once (n choices of one prompt share it), completions summed."""
    per_prompt = len(results) // max(prompts, 1) or 1
    prompt_tokens = sum(r.prompt_tokens for r in results[::per_prompt])
    return fmt.usage(prompt_tokens, sum(r.completion_tokens for r in results))


def _event_stream(chunks: AsyncIterator[str], run: _Run) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except OpenAIError as error:  # headers are sent: report in the stream, as vLLM does
            yield fmt.sse(error.body)
            yield fmt.SSE_DONE
        finally:  # also when the client went away (Starlette cancels this generator)
            run.cancel()

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_chunks(run: _Run, body: ChatCompletionRequest, request_id: str, created: int) -> AsyncIterator[str]:
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
    extra = {"usage": None} if body.include_usage else {}

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return fmt.sse({**head, "choices": [choice], **extra})

    results: list[StreamedResult] = []
    for index in range(body.n):  # at once, so the client sees the answer has started
        yield chunk(index, {"role": "assistant", "content": ""})
    async for kind, index, payload in run.events_until_end():
        if kind == "piece":
            piece: Piece = payload
            logprobs = fmt.chat_logprobs(piece.logprobs) if body.logprobs else None
            if piece.text or (logprobs and piece.logprobs):
                yield chunk(index, {"content": piece.text}, logprobs)
        elif kind == "done":
            results.append(_not_cancelled(payload))
            yield chunk(index, {}, None, fmt.finish_reason(payload))
    if body.include_usage:
        yield fmt.sse({**head, "choices": [], "usage": _usage(results, prompts=1)})
    yield fmt.SSE_DONE


async def _completion_chunks(run: _Run, body: CompletionRequest, request_id: str, created: int) -> AsyncIterator[str]:
    head = {"id": request_id, "object": "text_completion", "created": created, "model": body.model}
    extra = {"usage": None} if body.include_usage else {}

    def chunk(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return fmt.sse({**head, "choices": [choice], **extra})

    results: list[StreamedResult] = []
    offsets: dict[int, int] = {}
    async for kind, index, payload in run.events_until_end():
        if kind == "piece":
            piece: Piece = payload
            logprobs = None
            if body.logprobs is not None:
                logprobs = fmt.completion_logprobs(piece.logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(piece.text)
            if piece.text or piece.logprobs:
                yield chunk(index, piece.text, logprobs)
        elif kind == "done":
            results.append(_not_cancelled(payload))
            yield chunk(index, "", None, fmt.finish_reason(payload))
    if body.include_usage:
        yield fmt.sse({**head, "choices": [], "usage": _usage(results, prompts=len(body.prompts))})
    yield fmt.SSE_DONE
