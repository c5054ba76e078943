"""`Ensemble`: loaded models with their weights and ``top_k``, from prompts to ensembled text.

``Ensemble.load(["smollm2-135m-instruct", "gemma3-270m"])`` loads the models;
``ensemble.generate("Hello")`` formats the prompt for each (its own chat template with
``chat=True``), builds the `UniTEProcessor` and runs the primary's ``generate`` through the
one generation path (`unite_logits.ensemble.streaming.generate_rows`); `generate_alone` runs
one model by itself through the same path (the CLI's ``--compare``). `generate` (the module
function) does both steps for a one-off answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import LogitsProcessor

from ..core.checks import check_top_k, check_weight, context_window
from ..core.member import Member
from ..core.scoring import TokenScores
from ..core.trace import StepRecord
from ..models.loading import LoadedModel, load_model
from ..core.speculation import DEFAULT_DRAFT_TOKENS, DraftSchedule, SpeculationStats
from ..processor import UniTEProcessor, check_gate
from ..speculative import draft_and_verify
from ..remote import RemoteMember
from ..remote.primary import is_served, top_n_for
from ..remote.spec import remote_member_from_spec, served_primary_from_spec, split_remote_spec
from .options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions
from .prompts import (
    Prompt,
    PreparedPrompt,
    PromptError,
    PromptTooLongError,
    check_fits,
    check_prompt,
    encode_prompt,
    token_ids,
)
from .scoring import DEFAULT_BATCH_SIZE, Scorer
from .streaming import GenerationRequest, GenerationResult, Piece, generate_rows, left_pad_id

__all__ = ["Ensemble", "generate", "check_weights"]

Model = LoadedModel | RemoteMember


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


class Ensemble:
    """Loaded models (primary first) with their weights and ``top_k``.

    Use `load` to build one from names; a spec given twice is loaded once. Any model may be
    served (spec ``SPEC@URL``): an auxiliary as a `RemoteMember`, the primary as a `LoadedModel`
    holding a `ServedCausalLM`, which ``generate`` drives like a local model.
    """

    def __init__(self, models: Sequence[Model], *, weights: Sequence[float] | None = None, top_k: int = 10,
                 speculative: bool = True, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
                 confidence_gate: float | None = None):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if isinstance(models[0], RemoteMember):
            raise ValueError(f"the primary runs `generate`, so it has to be a model, not a `RemoteMember`: serve "
                             f"{models[0].name!r} as a primary with Ensemble.load(['NAME@URL', ...]) (a ServedCausalLM)")
        self.models = list(models)
        self.weights = check_weights(weights, len(self.models))
        self.top_k = check_top_k(top_k)
        self.speculative = bool(speculative)
        self.draft = DraftSchedule(num_draft_tokens)  # checked here, before any work
        self.confidence_gate = check_gate(confidence_gate)
        self.last_trace: list[StepRecord] = []  # of the last ensembled generation run with trace=True
        self.last_speculation: SpeculationStats | None = None  # of the last draft-and-verify generation

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
        speculative: bool = True,
        num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        confidence_gate: float | None = None,
    ) -> "Ensemble":
        """Check the options, then load each distinct spec once (primary first).

        A ``SPEC@URL`` (e.g. ``gemma3-270m@http://127.0.0.1:8080``) is served: only its
        tokenizer is loaded here, and its server is checked. A served primary becomes a
        `unite_logits.remote.ServedCausalLM` (``generate`` drives it like a local model), a
        served auxiliary a `RemoteMember`.
        """
        checked = check_weights(weights, len(specs))
        check_top_k(top_k)
        DraftSchedule(num_draft_tokens)
        check_gate(confidence_gate)
        loaded: dict[str, LoadedModel] = {}
        models: list[Model] = []
        for index, (spec, weight) in enumerate(zip(specs, checked)):
            if split_remote_spec(spec) is not None:
                models.append(served_primary_from_spec(spec, top_n=top_n_for(top_k)) if index == 0
                              else remote_member_from_spec(spec, weight=weight))
                continue
            if spec not in loaded:
                loaded[spec] = load_model(spec, device=device, dtype=dtype, progress=progress)
            models.append(loaded[spec])
        return cls(models, weights=weights, top_k=top_k, speculative=speculative, num_draft_tokens=num_draft_tokens,
                   confidence_gate=confidence_gate)

    @property
    def primary(self) -> LoadedModel:
        primary = self.models[0]
        assert isinstance(primary, LoadedModel)
        return primary

    # -- prompts ----------------------------------------------------------------------------
    def prepare(self, prompt: Prompt, *, chat: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> PreparedPrompt:
        """Encode ``prompt`` for every model and refuse, before any work, what generation would.

        Raises `PromptError` (a `ValueError`) for an empty or invalid prompt, a conversation a
        member's chat template refuses, and `PromptTooLongError` for a prompt that does not
        fit the primary's context window with ``max_new_tokens``, or an auxiliary's.
        Cost: one tokenization (and template) per model.
        """
        check_prompt(prompt)
        given = token_ids(prompt)
        chat = (chat or not isinstance(prompt, str)) and given is None
        ids: list[list[int]] = []
        if given is not None:  # the primary's ids; each auxiliary reads their text, as always
            size = len(self.primary.tokenizer)
            if max(given) >= size:
                raise PromptError(f"the prompt holds token id {max(given)}, past the primary's vocabulary of {size}")
            text = str(self.primary.tokenizer.decode(given, skip_special_tokens=True))
            ids = [given] + [encode_prompt(m, text, chat=False) for m in self.models[1:]]
        for loaded in self.models if given is None else ():
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

    def processor(self, prompt: Prompt | None = None, *, chat: bool = False, trace: bool = False) -> UniTEProcessor:
        """The `UniTEProcessor` of this ensemble for ``prompt`` (with ``chat``, each auxiliary gets the
        conversation in its own chat template; otherwise it re-encodes the primary's prompt text).
        Close it when done (``with``)."""
        member_prompts: list[Any] | None = None
        if chat and prompt is not None:
            member_prompts = [encode_prompt(m, prompt, chat=True) for m in self.models[1:]]
        return self._processor(member_prompts, trace)

    def _processor(self, member_prompts: list[Any] | None, trace: bool) -> UniTEProcessor:
        members = [m if isinstance(m, RemoteMember) else Member.from_loaded(m, w)
                   for m, w in zip(self.models[1:], self.weights[1:])]
        return UniTEProcessor(
            primary_tokenizer=self.primary.tokenizer,
            members=members,
            top_k=self.top_k,
            primary_weight=self.weights[0],
            member_prompts=member_prompts,
            primary_eos_token_ids=self.primary.eos_token_ids,
            trace=trace,
            primary_name=self.primary.name,
            primary_pad_token_id=left_pad_id(self.primary),
            num_draft_tokens=self.draft.start,
            confidence_gate=self.confidence_gate,
        )

    # -- generation -------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt,
        options: GenerationOptions | None = None,
        *,
        chat: bool = False,
        on_piece: Callable[[Piece], None] | None = None,
        cancel: threading.Event | None = None,
        trace: bool = False,
    ) -> GenerationResult:
        """The ensemble's answer to ``prompt`` (a list of messages implies ``chat``).

        ``on_piece`` receives the text as it becomes final; setting ``cancel`` ends the answer
        after the current step (finish reason ``"cancelled"``); ``trace`` keeps a `StepRecord`
        per step in `last_trace`.
        """
        options = options or GenerationOptions()
        prepared = self.prepare(prompt, chat=chat, max_new_tokens=options.max_new_tokens)
        return self.run([GenerationRequest(prepared, options, on_piece, cancel)], trace=trace)[0]

    def generate_batch(
        self, prompts: Sequence[Prompt], options: GenerationOptions | None = None, *, chat: bool = False,
        trace: bool = False,
    ) -> list[GenerationResult]:
        """`generate` for several prompts at once, in one batch (each row as it would be alone).

        Prompts may mix text and conversations (a list of messages implies ``chat`` for its
        row). Every prompt is checked before any work starts. Costs about one generation of
        the longest answer: each step is one batched forward pass per model.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("`prompts` has to be a non-empty list of prompts")
        options = options or GenerationOptions()
        prepared = [self.prepare(p, chat=chat, max_new_tokens=options.max_new_tokens) for p in prompts]
        return self.run([GenerationRequest(row, options) for row in prepared], trace=trace)

    def generate_alone(
        self, index: int, prompt: Prompt, options: GenerationOptions | None = None, *, chat: bool = False,
        on_piece: Callable[[Piece], None] | None = None, cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """What model ``index`` generates by itself (for comparison with the ensemble)."""
        loaded = self.models[index]
        if isinstance(loaded, RemoteMember):
            raise ValueError(f"{loaded.name!r} is served remotely; only models in this process generate alone")
        options = options or GenerationOptions()
        check_prompt(prompt)
        ids = encode_prompt(loaded, prompt, chat=chat or not isinstance(prompt, str))
        check_fits(loaded.model, loaded.name, len(ids), options.max_new_tokens)
        prepared = PreparedPrompt(prompt, chat, ids, [])
        return generate_rows(loaded, [GenerationRequest(prepared, options, on_piece, cancel)])[0]

    # -- scoring ----------------------------------------------------------------------------
    def scorer(self, *, batch_size: int = DEFAULT_BATCH_SIZE, add_bos_token: bool | None = None) -> Scorer:
        """A `Scorer` of this ensemble: ensembled log-likelihoods of continuations and texts.

        Raises:
            ValueError: a member is served remotely (scoring reads every model's distribution at
                every position of a text, which a served member does not give).
        """
        served = [str(m.name) for m in self.models if isinstance(m, RemoteMember) or is_served(m.model)]
        if served:
            raise ValueError(f"scoring needs every model in this process; served remotely: {', '.join(served)}")
        loaded = [m for m in self.models if isinstance(m, LoadedModel)]
        return Scorer(loaded, self.weights, self.top_k, batch_size=batch_size, add_bos_token=add_bos_token,
                      confidence_gate=self.confidence_gate)

    def score(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = DEFAULT_BATCH_SIZE,
              progress: bool = False) -> list[TokenScores]:
        """The ensemble's log-likelihood of each continuation given its context (docs/scoring.md):
        per token (`TokenScores.logprobs`), summed (`TokenScores.logprob`) and whether greedy
        decoding would have written it (`TokenScores.is_greedy`). One forward pass per model
        and batch of ``batch_size`` pairs."""
        return self.scorer(batch_size=batch_size).score_pairs(pairs, progress=progress)

    def score_rolling(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                      progress: bool = False) -> list[float]:
        """The ensemble's log-likelihood of each whole text (for perplexity), in disjoint windows
        of the shortest context window among the models."""
        return self.scorer(batch_size=batch_size).score_rolling(texts, progress=progress)

    def run(self, requests: Sequence[GenerationRequest], *, trace: bool = False,
            processors: Sequence[LogitsProcessor] = ()) -> list[GenerationResult]:
        """Rows from `prepare` through the primary's ``generate`` with one processor for the batch.

        The rows' ``max_new_tokens`` checks in `prepare` have to cover their options'.
        ``processors`` run after the ensembling step (they see the ensembled log-probabilities).
        """
        member_prompts: list[Any] | None = None
        if any(request.prepared.chat for request in requests):  # per member, each row's ids (None: the default)
            member_prompts = [[request.prepared.member_ids[j] for request in requests] for j in range(len(self.models) - 1)]
        with self._processor(member_prompts, trace) as processor:
            results = generate_rows(self.primary, requests, [processor, *processors], logprobs_from_processors=True,
                                    custom_generate=draft_and_verify if self.speculative else None)
            self.last_trace = list(processor.trace)
            self.last_speculation = processor.last_speculation
        return results


def _prompt_limit(member: Model) -> int | None:
    """The most prompt tokens an auxiliary takes (None: its config or server does not say)."""
    if isinstance(member, RemoteMember):
        return None if member.server.n_ctx is None else member.server.n_ctx - 1
    return context_window(member.model)


def generate(
    models: Sequence[str],
    prompt: Prompt,
    options: GenerationOptions | None = None,
    *,
    weights: Sequence[float] | None = None,
    top_k: int = 10,
    chat: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> str:
    """Load ``models`` (primary first), ensemble them on ``prompt`` and return the new text
    (greedy, `GenerationOptions`' defaults unless ``options`` say otherwise)."""
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"`models` has to be a list of model names, primary first (e.g. [{models!r}]), "
                        f"not {type(models).__name__}")
    check_prompt(prompt)
    ensemble = Ensemble.load(models, weights=weights, top_k=top_k, device=device, dtype=dtype)
    return ensemble.generate(prompt, options, chat=chat).text
