"""The JSON shapes of OpenAI responses, chunks and errors, built from our results.

Field for field as the OpenAI API (and vLLM / llama.cpp's servers) send them, so that any
OpenAI client reads them: ``chat.completion`` / ``chat.completion.chunk`` and
``text_completion`` objects, log-probs in the chat form (``content: [{token, logprob,
bytes, top_logprobs}]``) or the legacy completions form (``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``), and errors as ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ...core.speculation import SpeculationStats
from ...ensemble.streaming import GenerationResult, TokenLogprob

__all__ = [
    "error_body",
    "sse",
    "SSE_DONE",
    "usage",
    "chat_logprobs",
    "completion_logprobs",
    "finish_reason",
    "chat_choice",
    "completion_choice",
    "chat_delta",
    "text_delta",
    "response",
    "Chunks",
    "echo_choice",
]

SSE_DONE = "data: [DONE]\n\n"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, speculation: SpeculationStats | None = None) -> dict[str, Any]:
    """OpenAI's ``usage``; with ``speculation``, an extra ``"speculation"`` object (OpenAI
    clients keep unknown fields) saying what draft-and-verify did for this request: ``rounds``
    (those its rows took part in), tokens ``drafted`` by the primary, ``accepted`` as drafted,
    and ``ensembled`` (chosen by the ensemble against or after a draft)."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if speculation is not None:
        out["speculation"] = {"rounds": speculation.rounds, "drafted": speculation.drafted,
                              "accepted": speculation.accepted, "ensembled": speculation.ensembled}
    return out


def finish_reason(result: GenerationResult) -> str:
    """OpenAI knows ``stop`` and ``length``; a cancelled run only reaches a client that left."""
    return "length" if result.finish_reason == "length" else "stop"


def _entry(token: TokenLogprob) -> dict[str, Any]:
    return {"token": token.token, "logprob": token.logprob, "bytes": token.bytes}


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion (or of one chunk)."""
    return {"content": [{**_entry(t), "top_logprobs": [_entry(top) for top in t.top]} for t in tokens]}


def completion_logprobs(tokens: Sequence[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    """``choices[i].logprobs`` of a legacy completion; offsets count characters from ``text_offset``."""
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{top.token: top.logprob for top in t.top} for t in tokens],
        "text_offset": offsets,
    }


# -- choices: each shape built here, nowhere else -------------------------------------------
def chat_choice(index: int, result: GenerationResult, logprobs: bool) -> dict[str, Any]:
    """One choice of a ``chat.completion``."""
    return {"index": index, "message": {"role": "assistant", "content": result.text},
            "logprobs": chat_logprobs(result.logprobs) if logprobs else None, "finish_reason": finish_reason(result)}


def completion_choice(index: int, result: GenerationResult, logprobs: bool) -> dict[str, Any]:
    """One choice of a ``text_completion``."""
    return {"index": index, "text": result.text,
            "logprobs": completion_logprobs(result.logprobs) if logprobs else None, "finish_reason": finish_reason(result)}


def chat_delta(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
    """One choice of a ``chat.completion.chunk``."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def text_delta(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
    """One choice of a streamed ``text_completion`` chunk."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def echo_choice(index: int, echoed: Any, result: GenerationResult, view: Any, logprobs: int | None) -> dict[str, Any]:
    """A ``text_completion`` choice with ``echo``: the prompt's text and, per prompt token, its
    ensembled log-probability (None for the first, which nothing precedes) and, with
    ``logprobs: N``, its N likeliest alternatives; then the generated text's, if any."""
    ids = echoed.prompt_ids
    strings = [_token_text(view, token) for token in ids]
    scores = echoed.scores
    prompt = {
        "tokens": strings,
        "token_logprobs": [None, *scores.logprobs],
        "top_logprobs": [None, *({_token_text(view, t): lp for t, lp in top} for top in scores.top)],
        "text_offset": list(_offsets(strings, 0)),
    }
    text = view.tokenizer.decode(ids) + result.text
    out: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason(result)}
    if logprobs is not None:
        generated = completion_logprobs(result.logprobs, sum(len(s) for s in strings))
        out["logprobs"] = {key: prompt[key] + generated[key] for key in prompt}
    return out


def _token_text(view: Any, token: int) -> str:
    data = view.bytes_of(token)
    if data is None:
        return str(view.tokenizer.decode([token], skip_special_tokens=False))
    return data.decode("utf-8", errors="replace")


def _offsets(strings: Sequence[str], start: int) -> list[int]:
    offsets = []
    for text in strings:
        offsets.append(start)
        start += len(text)
    return offsets


def response(request_id: str, kind: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` or ``text_completion`` object."""
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage}


class Chunks:
    """The server-sent events of one streamed answer: every chunk carries the same head."""

    def __init__(self, request_id: str, kind: str, created: int, model: str, include_usage: bool) -> None:
        self.head = {"id": request_id, "object": kind, "created": created, "model": model}
        self.extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def choice(self, choice: dict[str, Any]) -> str:
        return sse({**self.head, "choices": [choice], **self.extra})

    def usage(self, usage: dict[str, Any]) -> str:
        return sse({**self.head, "choices": [], "usage": usage})
