"""What an ensemble is, in one typed object, and the file that carries it.

`EnsembleSpec` is an ensemble's definition: its models by spec (primary first), one weight per
model, ``top_k``, the combine rule and the confidence gate: everything that decides what the
ensemble writes and how it scores a text. `unite_logits.Ensemble`, the command line, the server,
the lm-eval model and the evaluation's run identity all take it whole, and every check of its
settings is made here, once, when it is built.

`EnsembleFile` is ``ensemble.json``: the spec, each model's weights digest, decoding defaults,
and (written by ``unite-logits select``) where the spec was tuned and how it scored on the
documents held out from tuning. Small, versioned and meant to be read by people::

    {"format": "unite-logits ensemble", "version": 1,
     "ensemble": {"models": ["gemma3-270m", "smollm2-135m-instruct"], "weights": [1.0, 0.5],
                  "top_k": 10, "combine": "mean", "confidence_gate": null},
     "digests": {"gemma3-270m": "a5fd...", "smollm2-135m-instruct": "b179..."},
     "decoding": {"max_new_tokens": 64, "speculative": true, "num_draft_tokens": 4},
     "tuned": {...}}

`read_ensemble_file` refuses, in one line each, a damaged file, another format or a newer
version, a model that is not installed, and a model whose weights are not the ones the file
was written for. Free of torch: the command line reads a file before loading anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.checks import check_int, check_top_k, check_weight
from ..core.speculation import DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS

__all__ = ["COMBINE_RULES", "EnsembleFile", "EnsembleFileError", "EnsembleSpec", "FILE_FORMAT", "FILE_VERSION",
           "read_ensemble_file", "write_ensemble_file"]

FILE_FORMAT = "unite-logits ensemble"
FILE_VERSION = 1
COMBINE_RULES = ("mean",)
"""``mean``: UniTE's rule, each model's probabilities over the union renormalised, then the weighted mean."""


class EnsembleFileError(ValueError):
    """An ensemble file that cannot be used; the message says why and what to do, in one line."""


def _gate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"`confidence_gate` has to be None or a probability in (0, 1], but is {value!r}")
    return float(value)


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble's definition (see the module docstring).

    Args:
        models: model specs, primary first (catalogue names, GGUF files, folders, ``SPEC@URL``).
        weights: one finite non-negative weight per model, not all zero (only ratios matter; a
            member of weight 0 takes no part); None: all 1.
        top_k: candidates each model proposes per step.
        combine: the combine rule (`COMBINE_RULES`).
        confidence_gate: None (exact UniTE), or a probability: positions where the primary's top
            token is at least this likely are the primary's alone (docs/speculative.md).

    Raises:
        ValueError, TypeError: a setting out of range, when the spec is built.
    """

    models: Sequence[str]  # kept as a tuple
    weights: Sequence[float] | None = None  # kept as a tuple, or None when all are 1
    top_k: int = 10
    combine: str = "mean"
    confidence_gate: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.models, (str, bytes)) or not isinstance(self.models, Sequence) or not self.models:
            raise ValueError("an ensemble needs at least one model (a list of model specs, primary first)")
        object.__setattr__(self, "models", tuple(str(model) for model in self.models))
        if self.weights is not None:
            if isinstance(self.weights, (str, bytes)) or len(self.weights) != len(self.models):
                count = len(self.weights) if not isinstance(self.weights, (str, bytes)) else "no list of"
                raise ValueError(f"got {count} weights for {len(self.models)} models (give one per model, primary first)")
            weights = tuple(check_weight(f"weights[{i}]", w) for i, w in enumerate(self.weights))
            if not any(weights):
                raise ValueError("the weights are all zero; at least one has to be positive")
            object.__setattr__(self, "weights", None if all(w == 1.0 for w in weights) else weights)
        object.__setattr__(self, "top_k", check_top_k(self.top_k))
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"`combine` has to be one of {', '.join(COMBINE_RULES)}, but is {self.combine!r}")
        object.__setattr__(self, "confidence_gate", _gate(self.confidence_gate))

    # -- reading it -----------------------------------------------------------------------
    @property
    def primary(self) -> str:
        return self.models[0]

    @property
    def weight_list(self) -> list[float]:
        """One weight per model (1.0 each when none were given)."""
        return list(self.weights) if self.weights is not None else [1.0] * len(self.models)

    @property
    def taking_part(self) -> list[str]:
        """The models that take part: the primary (it always writes the tokens) and every
        member of positive weight."""
        return [m for i, (m, w) in enumerate(zip(self.models, self.weight_list)) if i == 0 or w > 0]

    def settings(self) -> dict[str, Any]:
        """What decides the ensemble's answers besides its models: the weights (None when all
        are 1), ``top_k``, and the combine rule and gate where they are not the defaults. The
        evaluation's run identity holds exactly this, so runs of other settings never mix."""
        out: dict[str, Any] = {"weights": list(self.weights) if self.weights is not None else None,
                               "top_k": self.top_k}
        if self.combine != "mean":
            out["combine"] = self.combine
        if self.confidence_gate is not None:
            out["confidence_gate"] = self.confidence_gate
        return out

    def label(self) -> str:
        """A short name: the models joined by ``+``, the weights where not all 1."""
        names = "+".join(self.models)
        return names if self.weights is None else f"{names}@{','.join(f'{w:g}' for w in self.weights)}"

    # -- as data --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.models), "weights": self.weight_list, "top_k": self.top_k,
                "combine": self.combine, "confidence_gate": self.confidence_gate}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EnsembleSpec":
        """The spec a `to_dict` wrote. Raises `ValueError` naming an unknown or missing key."""
        known = {"models", "weights", "top_k", "combine", "confidence_gate"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ensemble setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "models" not in data:
            raise ValueError("the ensemble names no models")
        return cls(models=tuple(data["models"]), weights=data.get("weights"), top_k=data.get("top_k", 10),
                   combine=data.get("combine", "mean"), confidence_gate=data.get("confidence_gate"))


@dataclass(frozen=True)
class EnsembleFile:
    """The content of ``ensemble.json`` (see the module docstring)."""

    spec: EnsembleSpec
    digests: dict[str, str | None] = field(default_factory=dict)
    decoding: dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 64, "speculative": True,
                                                             "num_draft_tokens": DEFAULT_DRAFT_TOKENS})
    tuned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FILE_FORMAT, "version": FILE_VERSION, "ensemble": self.spec.to_dict(),
                               "digests": dict(self.digests), "decoding": dict(self.decoding)}
        if self.tuned is not None:
            out["tuned"] = self.tuned
        return out


def write_ensemble_file(path: str | os.PathLike[str], content: EnsembleFile) -> Path:
    """Write ``content`` as indented JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def read_ensemble_file(path: str | os.PathLike[str], *, check_models: bool = True) -> EnsembleFile:
    """Read and check an ensemble file.

    With ``check_models``, every model must be installed and have the weights the file names
    (the digest of a catalogue model, a GGUF file or a model folder; a served model is not
    checked). Cost: resolving each spec (a GGUF file path is hashed, about a second per GB).

    Raises:
        EnsembleFileError: one line: a missing, damaged, foreign or newer file, a bad setting,
            a model not installed (with its install command) or with other weights.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise EnsembleFileError(f"ensemble file {path} does not exist (`unite-logits select ... --out DIR` "
                                "writes DIR/ensemble.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise EnsembleFileError(f"ensemble file {path} is damaged (not JSON: {error})") from None
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise EnsembleFileError(f"{path} is not an ensemble file (its \"format\" is not {FILE_FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EnsembleFileError(f"ensemble file {path} is damaged (no valid \"version\")")
    if version > FILE_VERSION:
        raise EnsembleFileError(f"ensemble file {path} is version {version}, newer than this unite-logits reads "
                                f"({FILE_VERSION}); upgrade unite-logits")
    try:
        spec = EnsembleSpec.from_dict(_mapping(data.get("ensemble"), "ensemble"))
        digests = {str(k): (None if v is None else str(v)) for k, v in _mapping(data.get("digests", {}), "digests").items()}
        decoding = _decoding(_mapping(data.get("decoding", {}), "decoding"))
        tuned = data.get("tuned")
        if tuned is not None and not isinstance(tuned, dict):
            raise ValueError("\"tuned\" is not an object")
    except (TypeError, ValueError) as error:
        raise EnsembleFileError(f"ensemble file {path}: {error}") from None
    content = EnsembleFile(spec, digests, {**EnsembleFile(spec).decoding, **decoding}, tuned)
    if check_models:
        check_file_models(content, path)
    return content


def check_file_models(content: EnsembleFile, path: str | os.PathLike[str] = "the ensemble file") -> None:
    """Refuse (one line) a model of the file that is not installed or has other weights."""
    from ..models.errors import ModelError
    from ..models.sources import resolve
    from ..remote.spec import split_remote_spec

    for spec in content.spec.models:
        if split_remote_spec(spec) is not None:
            continue  # a served model: its server answers for it
        try:
            source = resolve(spec)
        except ModelError as error:
            raise EnsembleFileError(f"{path} names {spec!r}, which cannot be loaded here: {error}") from None
        expected = content.digests.get(spec)
        actual = source_digest(source)
        if expected is not None and actual is not None and expected != actual:
            raise EnsembleFileError(
                f"{path} was written for other weights of {spec!r} (digest {expected[:12]}..., installed "
                f"{actual[:12]}...); run `unite-logits select` again for these weights")


def source_digest(source: Any) -> str | None:
    """The weights digest `load_model` gives the model of ``source`` (without loading it)."""
    if source.entry is not None:
        return str(source.entry.sha256)
    if source.sha256 is not None:
        return str(source.sha256)
    if source.kind == "folder" and source.path is not None:
        from ..models.sources import folder_digest

        return folder_digest(source.path)
    return None


def _decoding(decoding: Mapping[str, Any]) -> dict[str, Any]:
    """The file's decoding defaults, each checked as its command-line flag would be (a bad one
    is refused with the file, not found minutes later); other keys are kept as they are."""
    out = dict(decoding)
    for key in ("max_new_tokens", "num_draft_tokens"):
        if key in out:
            out[key] = check_int(f"decoding.{key}", out[key], minimum=1)
    if out.get("num_draft_tokens", 1) > MAX_DRAFT_TOKENS:
        raise ValueError(f"`decoding.num_draft_tokens` has to be at most {MAX_DRAFT_TOKENS}, but is {out['num_draft_tokens']}")
    if "speculative" in out and not isinstance(out["speculative"], bool):
        raise ValueError(f"`decoding.speculative` has to be true or false, but is {out['speculative']!r}")
    return out


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"\"{name}\" is not an object")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number an ensemble file may hold")

