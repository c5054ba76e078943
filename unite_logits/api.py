"""One path from model names and a prompt to ensembled text, shared by the CLI and Python users.

``generate(["smollm2-135m-instruct", "gemma3-270m"], "Hello")`` loads the models, formats
the prompt for each (its own chat template with ``chat=True``), builds the
`UniTEProcessor` and runs the primary's ``generate``. `Ensemble`
keeps the loaded models for several calls (the CLI's ``--compare`` reuses them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jinja2 import TemplateError

from .chat import chat_prompt_ids, plain_text
from .models.loading import LoadedModel, load_model
from .remote import RemoteMember
from .remote.spec import remote_member_from_spec, split_remote_spec
from .member import check_top_k, check_weight
from .prompt_checks import PromptError, PromptTooLongError, check_fits, check_text, context_window

__all__ = ["Prompt", "GenerationResult", "PreparedPrompt", "Ensemble", "generate", "check_prompt", "check_weights"]

Prompt = Union[str, Sequence[Mapping[str, str]]]


def check_prompt(prompt: Prompt) -> None:
    """A prompt is non-blank valid text or a non-empty list of chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        check_text(prompt)
        return
    if not prompt or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt):
        raise ValueError("a chat prompt has to be a non-empty list of {'role': ..., 'content': ...} messages")
    for index, message in enumerate(prompt):
        check_text(str(message["content"]), f"message {index}")


def check_weights(weights: Sequence[float] | None, n_models: int) -> list[float]:
    """One finite non-negative weight per model (primary first), not all zero."""
    if weights is None:
        return [1.0] * n_models
    if len(weights) != n_models:
        raise ValueError(f"got {len(weights)} weights for {n_models} models (give one per model, primary first)")
    checked = [check_weight(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if not any(checked):
        raise ValueError("the weights are all zero; at least one has to be positive")
    return checked


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def encode_prompt(loaded: LoadedModel | RemoteMember, prompt: Prompt, *, chat: bool) -> list[int]:
    """Token ids of ``prompt`` as this model expects them.

    With ``chat`` the model's own chat template is applied (generation prompt added); a model
    without one gets the plain text, with a warning (`unite_logits.chat.chat_prompt_ids`).
    Without ``chat`` the text is encoded as the tokenizer does by default (with BOS where the
    tokenizer adds one).
    """
    if chat:
        return chat_prompt_ids(loaded.tokenizer, _messages(prompt), name=loaded.name)
    text = prompt if isinstance(prompt, str) else plain_text(prompt)
    return list(loaded.tokenizer(text)["input_ids"])


@dataclass(frozen=True)
class GenerationResult:
    """Generated text and how long it took (for a batch row, the whole batch's time)."""

    text: str
    new_tokens: int
    seconds: float
    prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt checked for every model: the primary's ids, and each auxiliary's ids for a chat."""

    prompt: Prompt
    chat: bool
    primary_ids: list[int]
    member_ids: list[list[int] | None]  # None: the auxiliary re-encodes the primary's prompt text


class Ensemble:
    """Loaded models (primary first) with their weights and ``top_k``.

    Use `load` to build one from names; a spec given twice is loaded once. An auxiliary may
    be a `RemoteMember` (a model behind a server; spec ``SPEC@URL``); the primary runs here.
    """

    def __init__(
        self, models: Sequence[LoadedModel | RemoteMember], *, weights: Sequence[float] | None = None, top_k: int = 10
    ):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if isinstance(models[0], RemoteMember):
            raise ValueError(f"the primary runs `generate` in this process; {models[0].name!r} is served remotely")
        self.models = list(models)
        self.weights = check_weights(weights, len(self.models))
        self.top_k = check_top_k(top_k)

    @classmethod
    def load(
        cls,
        specs: Sequence[str],
        *,
        weights: Sequence[float] | None = None,
        top_k: int = 10,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
    ) -> "Ensemble":
        """Check the options, then load each distinct spec once (primary first).

        An auxiliary ``SPEC@URL`` (e.g. ``gemma3-270m@http://127.0.0.1:8080``) becomes a
        `RemoteMember`: only its tokenizer is loaded here, and its server is checked.
        """
        checked = check_weights(weights, len(specs))
        check_top_k(top_k)
        if split_remote_spec(specs[0]) is not None:
            raise ValueError(f"the primary runs `generate` in this process and cannot be served remotely: {specs[0]!r}")
        loaded: dict[str, LoadedModel] = {}
        models: list[LoadedModel | RemoteMember] = []
        for spec, weight in zip(specs, checked):
            if split_remote_spec(spec) is not None:
                models.append(remote_member_from_spec(spec, weight=weight))
                continue
            if spec not in loaded:
                loaded[spec] = load_model(spec, device=device, dtype=dtype, progress=progress)
            models.append(loaded[spec])
        return cls(models, weights=weights, top_k=top_k)

    @property
    def primary(self) -> LoadedModel:
        primary = self.models[0]
        assert isinstance(primary, LoadedModel)
        return primary

    def prepare(self, prompt: Prompt, *, chat: bool = False, max_new_tokens: int = 64) -> PreparedPrompt:
        """Encode ``prompt`` for every model and refuse, before any work, what generation would.

        Raises `PromptError` (a `ValueError`) for an empty or invalid prompt, a conversation a
        member's chat template refuses, and `PromptTooLongError` for a prompt that does not
        fit the primary's context window with ``max_new_tokens``, or an auxiliary's.
        Cost: one tokenization (and template) per model.
        """
        try:
            check_prompt(prompt)
        except PromptError:
            raise
        except ValueError as error:
            raise PromptError(str(error)) from None
        chat = chat or not isinstance(prompt, str)
        ids: list[list[int]] = []
        for loaded in self.models:
            try:
                ids.append(encode_prompt(loaded, prompt, chat=chat))
            except TemplateError as error:
                raise PromptError(f"the chat template of {loaded.name} refuses these messages: {error}") from None
        primary = self.primary
        check_fits(primary.model, primary.name, len(ids[0]), max_new_tokens)
        for loaded, member_ids in zip(self.models[1:], ids[1:]):
            limit = _prompt_limit(loaded)
            if limit is not None and len(member_ids) > limit:
                raise PromptTooLongError(
                    f"the prompt is {len(member_ids)} tokens for {loaded.name}, past its context window of "
                    f"{limit}: shorten the prompt or leave this member out"
                )
        return PreparedPrompt(prompt, chat, ids[0], [m if chat else None for m in ids[1:]])

    def _run(
        self,
        loaded: LoadedModel,
        rows: Sequence[Sequence[int]],
        streamer: Any,
        processors: list[Any],
        generate_kwargs: dict[str, Any],
    ) -> list[GenerationResult]:
        """``loaded.model.generate`` on ``rows`` of prompt ids, left-padded into one batch.

        A row that has finished is filled with an EOS id (so the ensemble sees it finish);
        a row's new tokens run up to and including its first EOS.
        """
        model, tokenizer = loaded
        eos = list(loaded.eos_token_ids)
        pad = _left_pad_id(loaded)
        width = max(len(ids) for ids in rows)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in rows], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows],
                                      device=model.device)
        kwargs: dict[str, Any] = {
            "do_sample": False,
            "max_new_tokens": 64,
            "eos_token_id": eos or None,
            "pad_token_id": eos[0] if eos else pad,
        }
        kwargs.update(generate_kwargs)
        extra_processors = list(kwargs.pop("logits_processor", None) or [])  # the caller's run after ours
        started = time.perf_counter()
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_processor=[*processors, *extra_processors],
            streamer=streamer,
            **kwargs,
        )
        seconds = time.perf_counter() - started
        results = []
        for ids, row in zip(rows, output[:, width:].tolist()):
            ends = [i for i, token in enumerate(row) if token in eos]
            new = row[: ends[0] + 1] if ends else row
            results.append(GenerationResult(tokenizer.decode(new, skip_special_tokens=True), len(new), seconds,
                                            len(ids)))
        return results

    def processor(self, prompt: Prompt, *, chat: bool = False, trace: bool = False) -> Any:
        """The `UniTEProcessor` for this ensemble and prompt."""
        auxiliaries = self.models[1:]
        member_prompts = [encode_prompt(m, prompt, chat=True) for m in auxiliaries] if chat else None
        return self._processor(member_prompts, trace)

    def _processor(self, member_prompts: list[Any] | None, trace: bool) -> Any:
        from . import Member, UniTEProcessor

        auxiliaries = self.models[1:]
        members = [
            m if isinstance(m, RemoteMember) else Member.from_loaded(m, w) for m, w in zip(auxiliaries, self.weights[1:])
        ]
        return UniTEProcessor(
            primary_tokenizer=self.primary.tokenizer,
            members=members,
            top_k=self.top_k,
            primary_weight=self.weights[0],
            member_prompts=member_prompts,
            primary_eos_token_ids=self.primary.eos_token_ids,
            trace=trace,
            primary_name=self.primary.name,
            primary_pad_token_id=_left_pad_id(self.primary),
        )

    def generate(
        self, prompt: Prompt, *, chat: bool = False, streamer: Any = None, trace: bool = False, **generate_kwargs: Any
    ) -> GenerationResult:
        """Ensembled continuation of ``prompt`` (a list of messages implies ``chat``).

        A ``logits_processor`` list among ``generate_kwargs`` runs after the ensembling step
        (it sees the ensembled log-probabilities), before any sampling warper.
        """
        max_new_tokens = int(generate_kwargs.get("max_new_tokens", 64))
        prepared = self.prepare(prompt, chat=chat, max_new_tokens=max_new_tokens)
        return self.generate_prepared([prepared], streamer=streamer, trace=trace, **generate_kwargs)[0]

    def generate_batch(
        self, prompts: Sequence[Prompt], *, chat: bool = False, trace: bool = False, **generate_kwargs: Any
    ) -> list[GenerationResult]:
        """`generate` for several prompts at once, in one batch (each row as it would be alone).

        Prompts may mix text and conversations (a list of messages implies ``chat`` for its
        row). Every prompt is checked before any work starts. Costs about one generation of
        the longest answer: each step is one batched forward pass per model.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("`prompts` has to be a non-empty list of prompts")
        max_new_tokens = int(generate_kwargs.get("max_new_tokens", 64))
        prepared = [self.prepare(p, chat=chat, max_new_tokens=max_new_tokens) for p in prompts]
        return self.generate_prepared(prepared, trace=trace, **generate_kwargs)

    def generate_prepared(
        self, prepared: Sequence[PreparedPrompt], *, streamer: Any = None, trace: bool = False, **generate_kwargs: Any
    ) -> list[GenerationResult]:
        """Rows from `prepare` through the primary's ``generate``, one processor for the batch.

        The rows' ``max_new_tokens`` checks in `prepare` have to cover ``generate_kwargs``'s.
        """
        member_prompts: list[Any] | None = None
        if any(row.chat for row in prepared):
            member_prompts = [[row.member_ids[j] for row in prepared] for j in range(len(self.models) - 1)]
        with self._processor(member_prompts, trace) as processor:  # stops its worker threads after
            return self._run(self.primary, [row.primary_ids for row in prepared], streamer, [processor],
                             generate_kwargs)

    def generate_alone(
        self, index: int, prompt: Prompt, *, chat: bool = False, streamer: Any = None, **generate_kwargs: Any
    ) -> GenerationResult:
        """What model ``index`` generates by itself (for comparison with the ensemble)."""
        check_prompt(prompt)
        loaded = self.models[index]
        if isinstance(loaded, RemoteMember):
            raise ValueError(f"{loaded.name!r} is served remotely; only models in this process generate alone")
        ids = encode_prompt(loaded, prompt, chat=chat or not isinstance(prompt, str))
        check_fits(loaded.model, loaded.name, len(ids), int(generate_kwargs.get("max_new_tokens", 64)))
        return self._run(loaded, [ids], streamer, [], generate_kwargs)[0]


def _left_pad_id(loaded: LoadedModel) -> int:
    """What left-pads prompts in a batch: the pad token, else the first EOS id (as transformers)."""
    pad = loaded.tokenizer.pad_token_id
    return int(pad) if pad is not None else next(iter(loaded.eos_token_ids), 0)


def _prompt_limit(member: LoadedModel | RemoteMember) -> int | None:
    """The most prompt tokens an auxiliary takes (None: its config or server does not say)."""
    if isinstance(member, RemoteMember):
        return None if member.server.n_ctx is None else member.server.n_ctx - 1
    return context_window(member.model)


def generate(
    models: Sequence[str],
    prompt: Prompt,
    *,
    weights: Sequence[float] | None = None,
    top_k: int = 10,
    chat: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    streamer: Any = None,
    **generate_kwargs: Any,
) -> str:
    """Load ``models`` (primary first), ensemble them on ``prompt`` and return the new text.

    ``generate_kwargs`` go to ``model.generate`` (``max_new_tokens``, ``do_sample``, ...);
    greedy with 64 new tokens by default.
    """
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"`models` has to be a list of model names, primary first (e.g. [{models!r}]), "
                        f"not {type(models).__name__}")
    check_prompt(prompt)
    ensemble = Ensemble.load(models, weights=weights, top_k=top_k, device=device, dtype=dtype)
    return ensemble.generate(prompt, chat=chat, streamer=streamer, **generate_kwargs).text
