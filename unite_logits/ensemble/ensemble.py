"""`Ensemble`: models and their `EnsembleSpec`, from prompts to ensembled text.

``Ensemble.load(["smollm2-135m-instruct", "gemma3-270m"])`` (or ``Ensemble.from_file(
"ensemble.json")``, or ``Ensemble.from_spec(spec)``) loads the models;
``ensemble.generate("Hello")`` formats the prompt for each (its own chat template with
``chat=True``), builds the `UniTEProcessor` and runs the primary's ``generate`` through the
one generation path (`unite_logits.ensemble.streaming.generate_rows`); `generate_alone` runs
one model by itself through the same path (the CLI's ``--compare``). `generate` (the module
function) does both steps for a one-off answer.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import LogitsProcessor

from ..core.checks import context_window
from ..core.member import Member
from ..core.scoring import TokenScores
from ..core.trace import StepRecord
from ..models.loading import LoadedModel, load_model
from ..core.speculation import DEFAULT_DRAFT_TOKENS, DraftSchedule, SpeculationStats
from ..processor import UniTEProcessor
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
from .spec import EnsembleFileError, EnsembleSpec, read_ensemble_file
from .streaming import GenerationRequest, GenerationResult, Piece, generate_rows, left_pad_id

__all__ = ["Ensemble", "generate", "check_weights"]

Model = LoadedModel | RemoteMember


def check_weights(weights: Sequence[float] | None, n_models: int) -> list[float]:
    """One finite non-negative weight per model (primary first), not all zero (the spec's rule)."""
    return EnsembleSpec(tuple(f"model {i}" for i in range(max(1, n_models))), weights).weight_list


class Ensemble:
    """Models (primary first) and the `EnsembleSpec` that says how they are ensembled.

    Build one from a spec with `from_spec` (or from names with `load`, from an ensemble file with
    `from_file`); the constructor takes models already loaded, with the spec's settings as
    keywords (or a whole ``spec``). Any model may be served (spec ``SPEC@URL``): an auxiliary as a
    `RemoteMember`, the primary as a `LoadedModel` holding a `ServedCausalLM`, which ``generate``
    drives like a local model. The spec's weights are the weights used everywhere: a
    `RemoteMember`'s own ``weight`` is replaced by its weight in the spec.

    ``speculative`` (default True) decodes by draft-and-verify where it is exact
    (docs/speculative.md), starting from ``num_draft_tokens`` drafted tokens per round.
    """

    def __init__(self, models: Sequence[Model], spec: EnsembleSpec | None = None, *,
                 weights: Sequence[float] | None = None, top_k: int = 10, confidence_gate: float | None = None,
                 speculative: bool = True, num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
                 decoding: Mapping[str, Any] | None = None):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if isinstance(models[0], RemoteMember):
            raise ValueError(f"the primary runs `generate`, so it has to be a model, not a `RemoteMember`: serve "
                             f"{models[0].name!r} as a primary with Ensemble.load(['NAME@URL', ...]) (a ServedCausalLM)")
        if spec is None:
            spec = EnsembleSpec(tuple(str(m.name) for m in models), weights, top_k, confidence_gate=confidence_gate)
        elif len(spec.models) != len(models):
            raise ValueError(f"the spec names {len(spec.models)} models but {len(models)} were given")
        self.spec = spec
        self.models = [dataclasses.replace(m, weight=w) if isinstance(m, RemoteMember) and m.weight != w else m
                       for m, w in zip(models, spec.weight_list)]
        self.speculative = bool(speculative)
        self.draft = DraftSchedule(num_draft_tokens)  # checked here, before any work
        self.decoding = dict(decoding or {})  # an ensemble file's decoding defaults (max_new_tokens, ...)
        self.last_trace: list[StepRecord] = []  # of the last ensembled generation run with trace=True
        self.last_speculation: SpeculationStats | None = None  # of the last draft-and-verify generation

    @property
    def weights(self) -> list[float]:
        """One weight per model, primary first (the spec's)."""
        return self.spec.weight_list

    @property
    def top_k(self) -> int:
        return self.spec.top_k

    @property
    def confidence_gate(self) -> float | None:
        return self.spec.confidence_gate

    @classmethod
    def from_spec(
        cls,
        spec: EnsembleSpec,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
        speculative: bool = True,
        num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        decoding: Mapping[str, Any] | None = None,
        loader: Callable[[str], LoadedModel] | None = None,
    ) -> "Ensemble":
        """Load the spec's models (each distinct spec once, primary first) and ensemble them.

        The one way an ensemble is built from names: `load`, `from_file`, the command line, the
        server and the lm-eval model all come here. A ``SPEC@URL`` (e.g.
        ``gemma3-270m@http://127.0.0.1:8080``) is served: only its tokenizer is loaded here, and
        its server is checked. A served primary becomes a `unite_logits.remote.ServedCausalLM`
        (``generate`` drives it like a local model), a served auxiliary a `RemoteMember`.
        ``loader``: how a local spec is loaded (default `load_model` with ``device`` and ``dtype``).
        """
        DraftSchedule(num_draft_tokens)
        load = loader or (lambda name: load_model(name, device=device, dtype=dtype, progress=progress))
        loaded: dict[str, LoadedModel] = {}
        models: list[Model] = []
        for index, (name, weight) in enumerate(zip(spec.models, spec.weight_list)):
            if split_remote_spec(name) is not None:
                models.append(served_primary_from_spec(name, top_n=top_n_for(spec.top_k)) if index == 0
                              else remote_member_from_spec(name, weight=weight))
                continue
            if name not in loaded:
                loaded[name] = load(name)
            models.append(loaded[name])
        return cls(models, spec, speculative=speculative, num_draft_tokens=num_draft_tokens, decoding=decoding)

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
        """`from_spec` of ``EnsembleSpec(specs, weights, top_k, confidence_gate=...)``: every setting
        is checked before any model is loaded."""
        spec = EnsembleSpec(tuple(specs), weights, top_k, confidence_gate=confidence_gate)
        return cls.from_spec(spec, device=device, dtype=dtype, progress=progress, speculative=speculative,
                             num_draft_tokens=num_draft_tokens)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = True, speculative: bool | None = None,
                  num_draft_tokens: int | None = None) -> "Ensemble":
        """The ensemble an ensemble file (``ensemble.json``) defines, with its decoding defaults
        (``speculative`` and ``num_draft_tokens``, where given, win over the file's).

        Raises:
            EnsembleFileError: a damaged or foreign file, a model not installed or with other
                weights than the file was written for (before anything is loaded).
        """
        content = read_ensemble_file(path)
        decoding = content.decoding
        ensemble = cls.from_spec(content.spec, device=device, dtype=dtype, progress=progress,
                                 speculative=bool(decoding.get("speculative", True)) if speculative is None else speculative,
                                 num_draft_tokens=(int(decoding.get("num_draft_tokens", DEFAULT_DRAFT_TOKENS))
                                                   if num_draft_tokens is None else num_draft_tokens),
                                 decoding=decoding)
        for model in ensemble.models:  # the weights loaded are the ones the file names
            expected = content.digests.get(str(model.name))
            digest = getattr(model, "digest", None)
            if expected is not None and digest is not None and expected != digest:
                raise EnsembleFileError(f"{path} was written for other weights of {model.name!r}; run "
                                        "`unite-logits select` again for these weights")
        return ensemble

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
                   for m, w in zip(self.models[1:], self.weights[1:])]  # a RemoteMember carries the spec's weight
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
        Decoded by draft-and-verify, each result's ``speculation`` is its row's share of
        `last_speculation` (the batch's).
        """
        member_prompts: list[Any] | None = None
        if any(request.prepared.chat for request in requests):  # per member, each row's ids (None: the default)
            member_prompts = [[request.prepared.member_ids[j] for request in requests] for j in range(len(self.models) - 1)]
        with self._processor(member_prompts, trace) as processor:
            results = generate_rows(self.primary, requests, [processor, *processors], logprobs_from_processors=True,
                                    custom_generate=draft_and_verify if self.speculative else None)
            self.last_trace = list(processor.trace)
            self.last_speculation = processor.last_speculation
        if self.last_speculation is not None:  # each row's share: the server reports it per request
            for result, row in zip(results, self.last_speculation.rows):
                result.speculation = row
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
