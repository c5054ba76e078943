"""What to send a server for one next-token distribution, and how to read its answer.

Two wire formats, both asked for ONE generated token whose top-n alternatives (ids and
log-probabilities over the full vocabulary, before any sampler) are what we want:

* ``llama.cpp``: ``POST /completion`` of llama.cpp's ``llama-server`` with the prompt as
  token ids, ``n_predict: 1``, ``n_probs: n`` and ``cache_prompt: true`` (the server keeps
  the row's prefix in its KV cache, so a step processes only the new tokens). The answer's
  ``completion_probabilities[0].top_logprobs`` lists ``{"id", "logprob", ...}``.
* ``openai``: ``POST /v1/completions`` with a token-id prompt, ``max_tokens: 1`` and
  ``logprobs: n``. llama-server answers ``logprobs.content[0].top_logprobs`` with ids; vLLM
  answers the legacy ``logprobs.top_logprobs[0]``, a mapping keyed ``"token_id:ID"`` when
  asked with ``return_tokens_as_token_ids`` (sent with every request). A mapping keyed by
  token *strings* cannot be turned back into ids safely (several ids share a string) and
  is refused.

Everything here is pure (no I/O), so it is tested on literal answers; `MalformedAnswer`
says what is wrong with one, and the client turns it into a `RemoteMemberError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.checks import is_int

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Candidates",
    "MalformedAnswer",
    "completion_request",
    "parse_candidates",
]

Protocol = Literal["llama.cpp", "openai"]
PROTOCOLS: tuple[Protocol, ...] = ("llama.cpp", "openai")

_LOWEST = -1e30
"""llama.cpp writes a probability of 0 as the lowest float (JSON has no -inf); below this is -inf."""
_ROUNDING = 1e-3
"""Log-probabilities a little above 0 are rounding of a near-certain token, not an error."""
_ID_PREFIX = "token_id:"


class MalformedAnswer(ValueError):
    """The server's JSON does not hold the candidates it should; the message says what is missing."""


@dataclass(frozen=True)
class Candidates:
    """The server's top candidates for the next token: ids and their log-probabilities."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.ids)


def completion_request(protocol: Protocol, ids: Sequence[int], n: int, model: str | None = None) -> tuple[str, dict[str, Any]]:
    """Path and JSON body asking for the ``n`` likeliest next tokens after ``ids``.

    The prompt is sent as ids exactly as given (no BOS is added by either server to an id
    prompt); greedy settings keep the one token the server must pick cheap and
    deterministic; they do not touch the reported log-probabilities.
    """
    prompt = [int(i) for i in ids]
    if protocol == "llama.cpp":
        return "/completion", {
            "prompt": prompt,
            "n_predict": 1,
            "n_probs": n,
            "cache_prompt": True,
            "temperature": 0.0,
            "response_fields": ["completion_probabilities"],
        }
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": 1,
        "logprobs": n,
        "temperature": 0.0,
        "echo": False,
        "cache_prompt": True,  # llama-server's prefix cache; other servers ignore it
        "return_tokens_as_token_ids": True,  # vLLM: key candidates by id, not by string
    }
    if model is not None:
        body["model"] = model
    return "/v1/completions", body


def _at(value: Any, *path: str | int) -> Any:
    """``value[path[0]][path[1]]...``, or `MalformedAnswer` naming the first step that is missing."""
    where = "answer"
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise MalformedAnswer(f"{where} has no {step!r}") from None
        where = f"{where}[{step!r}]"
    return value


def _logprob(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedAnswer(f"{what} is {value!r}, not a number")
    value = float(value)
    if math.isnan(value) or value > _ROUNDING:
        raise MalformedAnswer(f"{what} is {value}, not a log-probability (<= 0)")
    return -math.inf if value < _LOWEST else min(value, 0.0)


def _token_id(value: Any, what: str) -> int:
    if not is_int(value) or value < 0:
        raise MalformedAnswer(f"{what} is {value!r}, not a token id")
    return int(value)


def _from_list(entries: Any) -> Candidates:
    """``[{"id": 5, "logprob": -0.1, ...}, ...]`` (llama.cpp, and its OpenAI endpoint)."""
    if not isinstance(entries, list):
        raise MalformedAnswer(f"top_logprobs is {type(entries).__name__}, not a list")
    ids, logprobs = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise MalformedAnswer(f"top_logprobs[{index}] is {entry!r}, not an object")
        if "id" not in entry:
            raise MalformedAnswer(f"top_logprobs[{index}] has no 'id' (keys: {sorted(entry)})")
        ids.append(_token_id(entry["id"], f"top_logprobs[{index}]['id']"))
        logprobs.append(_logprob(entry.get("logprob"), f"top_logprobs[{index}]['logprob']"))
    return Candidates(tuple(ids), tuple(logprobs))


def _from_mapping(entries: Any) -> Candidates:
    """``{"token_id:5": -0.1, ...}`` (vLLM's legacy completions format with token ids)."""
    if not isinstance(entries, Mapping):
        raise MalformedAnswer(f"top_logprobs[0] is {type(entries).__name__}, not an object")
    ids, logprobs = [], []
    for key, value in entries.items():
        if not (isinstance(key, str) and key.startswith(_ID_PREFIX) and key[len(_ID_PREFIX):].isdigit()):
            raise MalformedAnswer(
                f"the candidates are keyed by token strings ({key!r}), not ids; ask the server for ids "
                "(vLLM: --return-tokens-as-token-ids) or use the llama.cpp protocol"
            )
        ids.append(int(key[len(_ID_PREFIX):]))
        logprobs.append(_logprob(value, f"top_logprobs[0][{key!r}]"))
    return Candidates(tuple(ids), tuple(logprobs))


def parse_candidates(protocol: Protocol, answer: Any) -> Candidates:
    """The candidates in a server's JSON answer to `completion_request`."""
    if not isinstance(answer, Mapping):
        raise MalformedAnswer(f"the answer is {type(answer).__name__}, not a JSON object")
    if protocol == "llama.cpp":
        return _from_list(_at(answer, "completion_probabilities", 0, "top_logprobs"))
    logprobs = _at(answer, "choices", 0, "logprobs")
    if not isinstance(logprobs, Mapping):
        raise MalformedAnswer(f"answer['choices'][0]['logprobs'] is {logprobs!r}; the server returned no log-probabilities")
    if "content" in logprobs:
        return _from_list(_at(logprobs, "content", 0, "top_logprobs"))
    return _from_mapping(_at(logprobs, "top_logprobs", 0))
