"""What a server is and whether it serves the model the member's tokenizer belongs to.

Checked once, when a `RemoteMember` is built, so that a wrong URL or a wrong model fails
before any generation starts (a few small requests, well under a second on a LAN):

* the protocol: llama-server answers ``GET /props`` (its context per slot, its number of
  slots); any other server must answer ``GET /v1/models`` (OpenAI-compatible);
* the vocabulary: its size (llama-server reports ``n_vocab`` in ``/v1/models``) must
  cover the tokenizer's, and a probe text must tokenize to the same ids on the server
  (``POST /tokenize``, which llama-server and vLLM both offer) as with the tokenizer, or at
  least every id must detokenize to the same text (``POST /detokenize``: only ids are ever
  sent, so a server whose pre-tokenizer splits text differently is fine), as must the
  tokenizer's special tokens (they appear among the candidates). A server that offers no
  way to check is used with a warning that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.checks import is_int
from .client import JsonClient
from .protocols import Protocol

__all__ = ["ServerInfo", "describe_server", "check_vocabulary", "PROBE_TEXT"]

logger = logging.getLogger(__name__)

PROBE_TEXT = "Hello world! The year 1987, naïve café — 東京 ½ 🙂\n\tdef f(x): return x**2  # ok"
"""Words, digits, punctuation, accents, CJK, an emoji, code and whitespace runs."""
_SHOWN_IDS = 12


@dataclass(frozen=True)
class ServerInfo:
    """Facts about a server found at construction.

    Attributes:
        protocol: the wire format used for completions.
        model: the model name to send (OpenAI servers that want one), else None.
        n_vocab: the served model's vocabulary size, where the server says.
        n_ctx: the most tokens one request may hold (llama-server: context per slot).
        slots: requests the server runs at once (llama-server's ``-np``), where it says.
    """

    protocol: Protocol
    model: str | None = None
    n_vocab: int | None = None
    n_ctx: int | None = None
    slots: int | None = None


def _positive_int(value: Any) -> int | None:
    return int(value) if is_int(value) and value > 0 else None


def _first_model(models: Any) -> dict[str, Any]:
    data = models.get("data") if isinstance(models, dict) else None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}


def describe_server(client: JsonClient, protocol: Protocol | None, model: str | None) -> ServerInfo:
    """Find the protocol (unless given) and what the server says about its model.

    Raises:
        RemoteMemberError: the server cannot be reached, or answers neither protocol.
    """
    props = client.request("GET", "/props", allow=(404, 405, 501)) if protocol in (None, "llama.cpp") else None
    if protocol is None:
        protocol = "llama.cpp" if isinstance(props, dict) and "default_generation_settings" in props else "openai"
    if protocol == "llama.cpp" and not isinstance(props, dict):
        raise client.error("GET /props gave no llama-server properties; is this a llama.cpp server? "
                           "(use protocol='openai' for other servers)")
    models = client.request("GET", "/v1/models", allow=(404, 405, 501))
    if models is None and protocol == "openai":
        raise client.error("GET /v1/models is not there: the server is neither llama-server nor OpenAI-compatible")
    first = _first_model(models)
    meta = first.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    n_ctx = slots = None
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        n_ctx = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        slots = _positive_int(props.get("total_slots"))
    n_ctx = n_ctx or _positive_int(first.get("max_model_len"))  # vLLM
    if protocol == "openai" and model is None:
        model = first.get("id") if isinstance(first.get("id"), str) else None
    return ServerInfo(protocol, model, _positive_int(meta.get("n_vocab")), n_ctx, slots)


def _server_ids(client: JsonClient, text: str, info: ServerInfo, *, special: bool) -> list[int] | None:
    """The server's ids for ``text`` (no BOS/EOS added), or None if it has no tokenize endpoint."""
    body: dict[str, Any] = {
        "content": text, "add_special": False, "parse_special": special,  # llama-server
        "prompt": text, "add_special_tokens": False,  # vLLM
    }
    if info.model is not None:
        body["model"] = info.model
    answer = client.request("POST", "/tokenize", body, allow=(404, 405, 501))
    if answer is None:
        return None
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list) or not all(is_int(t) for t in tokens):
        raise client.error(f"POST /tokenize answered {str(answer)[:120]!r}, not a list of token ids")
    return tokens


def _show(ids: Sequence[int]) -> str:
    return str(list(ids[:_SHOWN_IDS])) + (" ..." if len(ids) > _SHOWN_IDS else "")


def _special_tokens(tokenizer: Any) -> list[tuple[str, int]]:
    """(text, id) of the tokenizer's BOS/EOS/UNK/PAD tokens that it has."""
    found = []
    for role in ("bos", "eos", "unk", "pad"):
        text, token_id = getattr(tokenizer, f"{role}_token", None), getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(text, str) and isinstance(token_id, int):
            found.append((text, token_id))
    return list(dict.fromkeys(found))


def _same_text(client: JsonClient, info: ServerInfo, tokenizer: Any, expected: Sequence[int], served: Sequence[int]) -> bool:
    """Whether the ids mean the same text on both sides, though the two tokenize the probe
    differently (llama.cpp's pre-tokenizer of SmolLM2 splits CJK otherwise than transformers').

    Ids are what the ensemble sends, never text, so a different *tokenization* does no harm
    as long as every id stands for the same piece: the server's detokenization of the
    tokenizer's ids, and of its own, must be the probe text, piece for piece. False where the
    server cannot detokenize.
    """
    probe = tokenizer.decode(list(expected))
    checks = [([token], tokenizer.decode([token])) for token in expected] + [(list(expected), probe), (list(served), probe)]
    for ids, text in checks:
        body: dict[str, Any] = {"tokens": ids}
        if info.model is not None:
            body["model"] = info.model
        answer = client.request("POST", "/detokenize", body, allow=(404, 405, 501))
        if not isinstance(answer, dict) or answer.get("content", answer.get("prompt")) != text:
            return False
    logger.info("remote member %r at %s tokenizes text differently from the tokenizer, but its ids mean the same "
                "text (only ids are sent)", client.member, client.url)
    return True


def check_vocabulary(client: JsonClient, info: ServerInfo, tokenizer: Any) -> None:
    """Raise `RemoteMemberError` unless the server's vocabulary is the tokenizer's.

    Where the server offers no way to check (no size, no tokenize endpoint), log a warning:
    a mismatch then shows only as poor ensembles.
    """
    size = len(tokenizer)
    if info.n_vocab is not None and info.n_vocab < size:
        raise client.error(
            f"the served model has {info.n_vocab} tokens but the tokenizer {size}: it is not this "
            "tokenizer's model (check the URL, or the SPEC before @)"
        )
    expected = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    served = _server_ids(client, PROBE_TEXT, info, special=False)
    if served is None:
        logger.warning(
            "remote member %r at %s: the server has no /tokenize endpoint, so its vocabulary cannot be "
            "checked against the tokenizer; make sure it serves the tokenizer's model", client.member, client.url,
        )
        return
    if served != expected and not _same_text(client, info, tokenizer, expected, served):
        first = next((i for i, (a, b) in enumerate(zip(served, expected)) if a != b), min(len(served), len(expected)))
        raise client.error(
            f"the server tokenizes a probe text differently from the tokenizer (first difference at token "
            f"{first}: server {_show(served[first:])}, tokenizer {_show(expected[first:])}); it serves another "
            "model than the tokenizer's (check the URL, or the SPEC before @)"
        )
    for text, token_id in _special_tokens(tokenizer):
        served = _server_ids(client, text, info, special=True)
        if served is not None and served != [token_id]:
            raise client.error(
                f"special token {text!r} is id {token_id} for the tokenizer but {_show(served)} on the server; "
                "it serves another model than the tokenizer's"
            )
