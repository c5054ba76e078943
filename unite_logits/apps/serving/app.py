"""The OpenAI-compatible HTTP application: routes, authentication, streaming, errors.

FastAPI validates request bodies against `unite_logits.serving.schemas` (a bad one is a 400
with an OpenAI-style error body, and the server carries on), the generation itself runs on
the `GenerationWorker` thread, and results come back to the event loop through an
``asyncio.Queue``. Streaming responses are server-sent events in the OpenAI chunk format,
ending with ``data: [DONE]``. While the server drains (`unite_logits.apps.serving.drain`),
new requests get 503 and ``/health`` says ``draining``. A client that disconnects cancels its job: a streamed one at
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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ...core.speculation import SpeculationStats
from ...ensemble.prompts import PromptTooLongError
from ...ensemble.streaming import GenerationResult
from . import openai_format as fmt
from ...core.checks import context_window
from ...core.token_bytes import token_bytes_view
from .drain import Drain, RefuseWhileDraining
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, SamplingFields, TokenizeRequest
from .worker import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH,
    ChoiceDone,
    Echoed,
    Ended,
    Event,
    Failed,
    GenerationWorker,
    Job,
    PieceReady,
    Rejected,
    Started,
)

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


class _RequireApiKey:
    """ASGI middleware: a request without ``Authorization: Bearer KEY`` gets a 401 before its body
    is read (a plain ASGI layer, so the routes still see a client that disconnects)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                body = fmt.error_body("Incorrect or missing API key (send it as 'Authorization: Bearer KEY').",
                                      code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Run:
    """One submitted job, seen from the event loop: its events arrive on an asyncio queue."""

    def __init__(self, worker: GenerationWorker, request_id: str, prompts: Sequence[Any], chat: bool,
                 body: SamplingFields, top_logprobs: int | None, settings: ServerSettings) -> None:
        self.worker = worker
        self.prompt_param = "messages" if chat else "prompt"
        self.has_started = False
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        try:
            options = body.options(settings.default_max_tokens, top_logprobs)
        except ValueError as error:
            raise OpenAIError(400, str(error)) from None
        echo = bool(getattr(body, "echo", False))
        self.job = Job(request_id, list(prompts), chat, options, self._notify, echo=echo,
                       generate=not echo or body.max_tokens != 0)
        self.echoes: dict[int, Echoed] = {}
        self.speculation: SpeculationStats | None = None  # this job's share of its batch's, once it ended
        worker.submit(self.job)

    def _notify(self, event: Event) -> None:  # called on the worker thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): stop generating
            self.job.cancel.set()

    def cancel(self) -> None:
        self.job.cancel.set()

    async def started(self, request: Request) -> None:
        """Wait until the worker takes the job; a prompt it refuses is a 400 (nothing was sent yet)."""
        async for event in self.events_until_end(request, until_started=True):
            if isinstance(event, Rejected):
                error = event.error
                code = "context_length_exceeded" if isinstance(error, PromptTooLongError) else "invalid_value"
                raise OpenAIError(400, str(error), param=self.prompt_param, code=code)
        if not self.has_started:  # ended unstarted: cancelled while it waited (its client left, or shutdown)
            if self.worker.closing:
                raise _shutting_down()
            raise _ClientGone()

    async def events_until_end(self, request: Request | None = None,
                               until_started: bool = False) -> AsyncIterator[PieceReady | Echoed | ChoiceDone | Rejected]:
        """Pieces and per-choice results until the job ends (or, ``until_started``, until it
        starts); with ``request``, watch for a disconnect."""
        checked = time.monotonic()
        while True:
            event: Event | None
            try:
                event = await asyncio.wait_for(self.events.get(), timeout=DISCONNECT_POLL_S if request is not None else None)
            except asyncio.TimeoutError:
                event = None
            if request is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel()
                    raise _ClientGone()
            if event is None:
                continue
            if isinstance(event, Failed):
                raise OpenAIError(500, f"generation failed: {event.error}", "server_error")
            if isinstance(event, Started):
                self.has_started = True
                if until_started:
                    return
                continue
            if isinstance(event, Ended):
                self.speculation = event.speculation
                return
            yield event
            if isinstance(event, Rejected):
                return

    async def results(self, request: Request) -> list[GenerationResult]:
        done: dict[int, GenerationResult] = {}
        async for event in self.events_until_end(request):
            if isinstance(event, ChoiceDone):
                done[event.choice] = _not_cancelled(event.result)
            elif isinstance(event, Echoed):
                self.echoes[event.choice] = event
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

    # -- authentication: before anything else is read (the body, the route), on every path
    # but /health (the API description included) ---------------------------------------
    if settings.api_key is not None:
        app.add_middleware(_RequireApiKey, api_key=settings.api_key)
    # -- draining (outermost: counted and refused before anything else) -------------------
    drain = Drain()
    app.state.drain = drain
    app.add_middleware(RefuseWhileDraining, drain=drain)

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise OpenAIError(400, f"The model '{name}' does not exist; this server has '{settings.model_name}'.",
                              param="model", code="model_not_found")

    spec = ensemble.spec  # what was asked for is what is shown (a served member's own weight gave way to it)
    model_card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "unite-logits",
                  "members": list(spec.models), "weights": spec.weight_list, "top_k": spec.top_k,
                  "combine": spec.combine, "confidence_gate": spec.confidence_gate,
                  "speculative": bool(ensemble.speculative)}

    # -- routes --------------------------------------------------------------------------
    @app.get("/health", response_model=None)
    async def health() -> dict[str, Any] | JSONResponse:
        if drain.draining:  # a load balancer takes this server out of rotation; the rest finishes
            return JSONResponse({"status": "draining", "in_flight": drain.in_flight,
                                 "seconds_left": round(drain.seconds_left(), 1)},
                                status_code=503, headers={"Retry-After": str(drain.retry_after())})
        if not worker.alive:  # nothing would ever be answered: say so to a load balancer
            return JSONResponse({"status": "error", "message": "the generation worker has stopped"}, status_code=503)
        return {"status": "ok", "waiting": worker.waiting, "in_flight": drain.in_flight}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise OpenAIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return model_card

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        run = _Run(worker, request_id, [body.template_messages()] * body.n, True, body, body.wanted_top_logprobs,
                   settings)
        answer = await _answer(run, request,
                               _chat_chunks(run, body, request_id, created=int(time.time())) if body.stream else None)
        if not isinstance(answer, list):
            return answer
        choices = [fmt.chat_choice(i, result, body.logprobs) for i, result in enumerate(answer)]
        return fmt.response(request_id, "chat.completion", body.model, choices, _usage(run, answer, prompts=1))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        prompts = [p for p in body.prompts for _ in range(body.n)]
        run = _Run(worker, request_id, prompts, False, body, body.logprobs, settings)
        answer = await _answer(run, request,
                               _completion_chunks(run, body, request_id, created=int(time.time())) if body.stream else None)
        if not isinstance(answer, list):
            return answer
        if body.echo:
            view = token_bytes_view(ensemble.primary.tokenizer, ensemble.primary.eos_token_ids)
            choices = [fmt.echo_choice(i, run.echoes[i], result, view, body.logprobs) for i, result in enumerate(answer)]
        else:
            choices = [fmt.completion_choice(i, result, body.logprobs is not None) for i, result in enumerate(answer)]
        return fmt.response(request_id, "text_completion", body.model, choices,
                            _usage(run, answer, prompts=len(body.prompts)))

    # -- the primary's tokenizer, as lm-eval's remote tokenizer and vLLM's server offer it ----
    tokenizer = ensemble.primary.tokenizer

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return {"eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token,
                "chat_template": getattr(tokenizer, "chat_template", None),
                "model_max_length": context_window(ensemble.primary.model), "tokenizer": ensemble.primary.name}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        ids = tokenizer(body.text, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"tokens": list(ids), "count": len(ids), "max_model_len": context_window(ensemble.primary.model)}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        if body.tokens and max(body.tokens) >= len(tokenizer):
            raise OpenAIError(400, f"token id {max(body.tokens)} is past the vocabulary of {len(tokenizer)}",
                              param="tokens", code="invalid_value")
        return {"prompt": tokenizer.decode(body.tokens)}

    return app


async def _answer(run: _Run, request: Request,
                  stream: AsyncIterator[str] | None) -> StreamingResponse | JSONResponse | list[GenerationResult]:
    """Once the worker starts ``run``: the event stream (``stream`` given) or every choice's result;
    a 499 when the client left first."""
    try:
        await run.started(request)
        if stream is not None:
            return _event_stream(stream, run)
        return await run.results(request)
    except _ClientGone:
        return JSONResponse(fmt.error_body("client disconnected"), status_code=499)


def _shutting_down() -> OpenAIError:
    return OpenAIError(503, "the server is shutting down; the answer was cut short", "server_error",
                       code="server_shutdown")


def _not_cancelled(result: GenerationResult) -> GenerationResult:
    """A generation cancelled while its client is still there: the server is shutting down."""
    if result.finish_reason == "cancelled":
        raise _shutting_down()
    return result


def _usage(run: _Run, results: Sequence[GenerationResult], prompts: int) -> dict[str, Any]:
    """Each distinct prompt counted once (n choices of one prompt share it), completions summed;
    and the request's own draft-and-verify work, where it was decoded so."""
    per_prompt = len(results) // max(prompts, 1) or 1
    prompt_tokens = sum(r.prompt_tokens for r in results[::per_prompt])
    return fmt.usage(prompt_tokens, sum(r.completion_tokens for r in results), run.speculation)


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
    chunk = fmt.Chunks(request_id, "chat.completion.chunk", created, body.model, body.include_usage)
    results: list[GenerationResult] = []
    for index in range(body.n):  # at once, so the client sees the answer has started
        yield chunk.choice(fmt.chat_delta(index, {"role": "assistant", "content": ""}))
    async for event in run.events_until_end():
        if isinstance(event, PieceReady):
            logprobs = fmt.chat_logprobs(event.piece.logprobs) if body.logprobs else None
            if event.piece.text or (logprobs and event.piece.logprobs):
                yield chunk.choice(fmt.chat_delta(event.choice, {"content": event.piece.text}, logprobs))
        elif isinstance(event, ChoiceDone):
            results.append(_not_cancelled(event.result))
            yield chunk.choice(fmt.chat_delta(event.choice, {}, None, fmt.finish_reason(event.result)))
    if body.include_usage:
        yield chunk.usage(_usage(run, results, prompts=1))
    yield fmt.SSE_DONE


async def _completion_chunks(run: _Run, body: CompletionRequest, request_id: str, created: int) -> AsyncIterator[str]:
    chunk = fmt.Chunks(request_id, "text_completion", created, body.model, body.include_usage)
    results: list[GenerationResult] = []
    offsets: dict[int, int] = {}
    async for event in run.events_until_end():
        if isinstance(event, PieceReady):
            piece, index = event.piece, event.choice
            logprobs = None
            if body.logprobs is not None:
                logprobs = fmt.completion_logprobs(piece.logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(piece.text)
            if piece.text or piece.logprobs:
                yield chunk.choice(fmt.text_delta(index, piece.text, logprobs))
        elif isinstance(event, ChoiceDone):
            results.append(_not_cancelled(event.result))
            yield chunk.choice(fmt.text_delta(event.choice, "", None, fmt.finish_reason(event.result)))
    if body.include_usage:
        yield chunk.usage(_usage(run, results, prompts=len(body.prompts)))
    yield fmt.SSE_DONE
