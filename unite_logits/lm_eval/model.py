"""`UniteLM`: an ensemble as an lm-evaluation-harness model (registered as ``unite``).

``--model unite --model_args models=smollm2-135m-instruct+gemma3-270m`` evaluates the UniTE
ensemble of those models (the first is the primary); ONE name evaluates that model alone
through the same code, so members and ensemble are measured by one path. Requests go to
`unite_logits.ensemble.scoring.Scorer` (``loglikelihood``, ``loglikelihood_rolling``: the
ensembled log-likelihoods of docs/scoring.md, in batches, one forward pass per model and
batch) and to `Ensemble.run` (``generate_until``: rows of one ``generate``, each stopping at
its own ``until`` strings and ``max_gen_toks``).

With ``--apply_chat_template`` each member formats the conversation with its own chat
template: `UniteLM.apply_chat_template` returns the primary's rendering (what lm-eval shows
and the primary reads) and remembers the messages, so the members' prompts are their own.

Model arguments (``key=value`` separated by commas; lists joined with ``+``):

* ``models``: catalogue names or model folders, primary first (required unless ``ensemble``);
* ``weights``: one per model, e.g. ``1+0.5`` (default all 1);
* ``top_k``: candidates per model and position (default 10);
* ``ensemble``: an ensemble file (``ensemble.json``, written by ``unite-logits select``): exactly
  that ensemble, its models, weights, top-k and gate (so not with ``models``, ``weights``, ``top_k``);
* ``speculative``: ``true`` (default: the file's, else true) or ``false``: how ``generate_until``
  decodes, by draft-and-verify or token by token (the same answers; docs/speculative.md);
* ``dtype``: ``float32`` (default), ``bfloat16`` or ``float16``; ``device``: ``cpu`` (default), ``cuda``...;
* ``batch_size``: requests per forward pass (lm-eval's ``--batch_size`` also sets it; ``auto`` is 8);
* ``threads``: torch threads (default: torch's);
* ``add_bos_token``: as lm-eval's ``hf`` model (default: each tokenizer's own choice);
* ``max_length``: the longest text (default: the smallest context window of the models).

``max_batch_size`` (from lm-eval's command line) is accepted and not used. A bad value is a
`ModelArgsError` (a ``ValueError``) raised before any model is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from tqdm.auto import tqdm

from ..core.chat import chat_prompt_ids
from ..core.checks import check_int, is_int
from ..core.scoring import ScoreRequest
from ..ensemble.ensemble import Ensemble
from ..ensemble.spec import EnsembleFileError, EnsembleSpec
from ..ensemble.options import GenerationOptions
from ..ensemble.prompts import PreparedPrompt
from ..ensemble.scoring import DEFAULT_BATCH_SIZE, encode_pair, encode_text
from ..ensemble.streaming import GenerationRequest
from ..models.loading import check_device

__all__ = ["ModelArgsError", "UniteLM", "parse_list"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default for ``max_gen_toks``."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": torch.float32}


class ModelArgsError(ValueError):
    """A bad ``--model_args`` value of the ``unite`` model, found before any model is loaded;
    ``unite-logits lm-eval`` prints it as one line (exit status 2) instead of a traceback."""


_KNOWN = ("models", "weights", "top_k", "ensemble", "speculative", "dtype", "device", "batch_size", "threads",
          "add_bos_token", "max_length")
_DEFAULT_TOP_K = 10


def parse_list(value: Any, what: str) -> list[str]:
    """``a+b+c`` (lm-eval splits model arguments at commas), or a list already."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = [part.strip() for part in str(value).split("+")]
    if not items or any(not item for item in items):
        raise ModelArgsError(f"`{what}` has to name at least one model, joined with '+' (e.g. a+b), but is {value!r}")
    return items


def _weights(value: Any) -> list[float] | None:
    """Numbers joined with ``+`` (how many, and their range, the `EnsembleSpec` checks)."""
    if value is None:
        return None
    try:
        return [float(w) for w in parse_list(value, "weights")]
    except ValueError:
        raise ModelArgsError(f"`weights` has to be numbers joined with '+', one per model (e.g. 1+0.5), "
                             f"but is {value!r}") from None


def _boolean(name: str, value: Any) -> bool | None:
    """``true`` or ``false`` (lm-eval hands them over as bools; Python callers may pass text)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ModelArgsError(f"`{name}` has to be true or false, but is {value!r}")


def _integer(name: str, value: Any, minimum: int = 1) -> int:
    """An integer argument (lm-eval hands over ``3`` as an int; Python callers may pass ``"3"``)."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    try:
        return check_int(name, value, minimum=minimum)
    except ValueError as error:
        raise ModelArgsError(str(error)) from None


def _batch_size(value: Any) -> int:
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    if not is_int(value) and not (isinstance(value, str) and value.strip().isdigit()):
        raise ModelArgsError(f"`batch_size` has to be a positive integer or 'auto', but is {value!r}")
    if int(value) < 1:
        raise ModelArgsError(f"`batch_size` has to be a positive integer or 'auto', but is {value!r}")
    return int(value)


def _device(value: Any) -> str:
    """A device this machine has; lm-eval's CLI defaults to ``cuda:0``, which falls back to the
    CPU where there is no GPU (as ``hf`` does)."""
    device = str(value or "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.info("no CUDA device here; running on the CPU")
        return "cpu"
    try:
        check_device(device)
    except ValueError as error:
        raise ModelArgsError(f"`device`: {error}") from None
    return device


def _spec(models: Any, weights: Any, top_k: Any) -> EnsembleSpec:
    """The `EnsembleSpec` of ``models``, ``weights`` and ``top_k`` (one line if any is bad)."""
    if models is None:
        raise ModelArgsError("the unite model needs `models=` (e.g. --model_args models=smollm2-135m-instruct+gemma3-270m) "
                             "or `ensemble=FILE`")
    names = parse_list(models, "models")
    weight_values = _weights(weights)
    k = _DEFAULT_TOP_K if top_k is None else _integer("top_k", top_k)
    try:
        return EnsembleSpec(names, weight_values, k)
    except (TypeError, ValueError) as error:
        raise ModelArgsError(str(error)) from None


class UniteLM(LM):
    """The UniTE ensemble of ``models`` as an lm-eval ``LM`` (see the module docstring)."""

    def __init__(self, models: Any = None, weights: Any = None, top_k: Any = None, dtype: str = "float32",
                 device: Any = "cpu", batch_size: Any = 1, max_batch_size: Any = None, threads: Any = None,
                 add_bos_token: bool | None = None, max_length: int | None = None, ensemble: Any = None,
                 speculative: Any = None, **unknown: Any) -> None:
        super().__init__()
        # Every argument is checked before a model is loaded: a mistake costs no loading time.
        if unknown:
            raise ModelArgsError(f"unknown model argument(s) for unite: {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(_KNOWN)})")
        spec = None if ensemble is not None else _spec(models, weights, top_k)
        if ensemble is not None:
            given = [f"{key}=" for key, value in (("models", models), ("weights", weights), ("top_k", top_k))
                     if value is not None]
            if given:
                raise ModelArgsError(f"`ensemble=FILE` defines the models and their settings; leave out "
                                     f"{', '.join(given)} (or edit the file)")
        decode_speculatively = _boolean("speculative", speculative)
        if str(dtype) not in _DTYPES:
            raise ModelArgsError(f"`dtype` has to be one of {', '.join(_DTYPES)}, but is {dtype!r}")
        chosen_device = _device(device)
        size = _batch_size(batch_size)
        thread_count = None if threads is None else _integer("threads", threads)
        longest = None if max_length is None else _integer("max_length", max_length)
        add_bos_token = _boolean("add_bos_token", add_bos_token)
        if thread_count is not None:
            torch.set_num_threads(thread_count)
        if spec is not None:
            loaded = Ensemble.from_spec(spec, device=chosen_device, dtype=_DTYPES[str(dtype)],
                                        speculative=decode_speculatively is not False)
        else:
            try:  # the file and its models are checked before any model is loaded
                loaded = Ensemble.from_file(str(ensemble), device=chosen_device, dtype=_DTYPES[str(dtype)],
                                            speculative=decode_speculatively)
            except EnsembleFileError as error:
                raise ModelArgsError(f"`ensemble`: {error}") from None
        self._attach(loaded, size, add_bos_token, longest)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any],
                            additional_config: dict[str, Any] | None = None) -> "UniteLM":
        """What lm-eval calls: ``arg_dict`` from ``--model_args``, ``additional_config`` its own
        ``--batch_size``, ``--max_batch_size`` and ``--device`` (always set by its command line).
        A key in both is taken from ``--model_args`` (lm-eval would pass it twice: a TypeError)."""
        extra = {key: value for key, value in (additional_config or {}).items()
                 if value is not None and key not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> "UniteLM":
        """``key=value,...`` parsed as lm-eval parses it, then `create_from_arg_obj`."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def from_ensemble(cls, ensemble: Ensemble, *, batch_size: int = DEFAULT_BATCH_SIZE,
                      add_bos_token: bool | None = None, max_length: int | None = None,
                      progress: bool = True) -> "UniteLM":
        """The lm-eval model of an `Ensemble` already loaded (models shared, nothing loaded again);
        ``progress=False`` hides its progress bars."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._attach(ensemble, _batch_size(batch_size), add_bos_token, max_length)
        lm.progress = progress
        return lm

    def _attach(self, ensemble: Ensemble, batch_size: int, add_bos_token: bool | None, max_length: int | None) -> None:
        self.ensemble = ensemble
        self.batch_size_per_gpu = batch_size
        self.scorer = ensemble.scorer(batch_size=batch_size, add_bos_token=add_bos_token)
        if max_length is not None:
            self.scorer.max_length = int(max_length)
        self._chats: dict[str, tuple[list[dict[str, str]], bool]] = {}
        self.progress = True

    # -- what lm-eval reads of a model -------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.ensemble.primary.tokenizer

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def tokenizer_name(self) -> str:
        return "unite-" + "+".join(str(m.name) for m in self.ensemble.models).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records of the model in its results: the ensemble's spec, and how
        ``generate_until`` decoded."""
        return {"unite_ensemble": self.ensemble.spec.to_dict(), "unite_speculative": self.ensemble.speculative}

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The primary's rendering of the conversation; the members get theirs when it is scored."""
        rendered = self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=not add_generation_prompt)
        self._chats[str(rendered)] = ([dict(m) for m in chat_history], add_generation_prompt)
        return str(rendered)

    def _member_prompts(self, context: str) -> list[list[int] | None] | None:
        """Each member's own chat-template ids for a context `apply_chat_template` rendered (and
        any text lm-eval appended to it, encoded after them); None for a plain context."""
        rendered = context if context in self._chats else next(
            (key for key in self._chats if context.startswith(key)), None)
        if rendered is None:
            return None
        messages, generation_prompt = self._chats[rendered]
        suffix = context[len(rendered):]
        prompts: list[list[int] | None] = []
        for member in self.ensemble.models[1:]:
            ids = chat_prompt_ids(member.tokenizer, messages, name=member.name, add_generation_prompt=generation_prompt)
            prompts.append(ids + (list(member.tokenizer(suffix, add_special_tokens=False)["input_ids"]) if suffix else []))
        return prompts

    # -- scoring --------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        disable_tqdm = disable_tqdm or not self.progress
        scoring = []
        for context, continuation in (request.args for request in requests):
            context_ids, continuation_ids = encode_pair(self.tokenizer, context, continuation, self.scorer.add_bos_token)
            scoring.append(ScoreRequest(context_ids, continuation_ids, self._member_prompts(context)))
        def keep(indices: list[int], results: list[Any]) -> None:  # lm-eval's --use_cache keeps each batch
            for index, result in zip(indices, results):
                self.cache_hook.add_partial("loglikelihood", requests[index].args, (result.logprob, result.is_greedy))

        scored = self.scorer.score(scoring, progress=not disable_tqdm, desc="unite loglikelihood", on_batch=keep)
        return [(result.logprob, result.is_greedy) for result in scored]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        disable_tqdm = disable_tqdm or not self.progress
        out = []
        for request in tqdm(requests, desc="unite loglikelihood_rolling", unit="text", disable=disable_tqdm):
            (total,) = self.scorer.score_rolling([request.args[0]])
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    # -- generation -----------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Rows of one ``generate`` per batch of requests that decode alike; each row stops at
        its ``until`` strings (cut before them) or its ``max_gen_toks``."""
        disable_tqdm = disable_tqdm or not self.progress
        prepared = [self._prepare(request.args[0], request.args[1]) for request in requests]
        groups: dict[Any, list[int]] = {}
        for index, (_, options) in enumerate(prepared):
            groups.setdefault((options.decoding, options.seed), []).append(index)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="unite generate_until", unit="request", disable=disable_tqdm)
        with bar:
            for indices in groups.values():
                indices.sort(key=lambda i: -len(prepared[i][0].primary_ids))
                for start in range(0, len(indices), self.batch_size_per_gpu):
                    batch = indices[start: start + self.batch_size_per_gpu]
                    results = self.ensemble.run([GenerationRequest(*prepared[i]) for i in batch])
                    for i, result in zip(batch, results):
                        out[i] = result.text
                        self.cache_hook.add_partial("generate_until", requests[i].args, result.text)
                    bar.update(len(batch))
        return out

    def _prepare(self, context: str, gen_kwargs: dict[str, Any]) -> tuple[PreparedPrompt, GenerationOptions]:
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = next((int(kwargs.pop(k)) for k in ("max_gen_toks", "max_new_tokens", "max_tokens",
                                                     "max_completion_tokens") if kwargs.get(k) is not None),
                       DEFAULT_MAX_GEN_TOKS)
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        options = GenerationOptions(max_new_tokens=max_new, temperature=(temperature or 1.0) if sample else None,
                                    top_p=kwargs.pop("top_p", None) if sample else None,
                                    stop=tuple(s for s in until if s))
        member_prompts = self._member_prompts(context)
        if member_prompts is None:
            return self.ensemble.prepare(context, max_new_tokens=max_new), options
        ids = encode_text(self.tokenizer, context, self.scorer.add_bos_token)  # the primary's own rendering
        return PreparedPrompt(context, True, ids, list(member_prompts)), options
