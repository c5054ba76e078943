"""``load_model``: one call from a name or path to a ready ``(model, tokenizer)`` pair.

A spec is resolved first (cheap: no weights touched) so that a typo or a missing package is
reported before minutes of loading. GGUF sources are converted once into the cache
(`unite_logits.models.store`) and loaded from there ever after.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..progress import progress_bars
from . import store
from .catalogue import catalogue_names
from .conversion import convert_gguf
from .errors import CacheNotWritableError, DeviceError, ModelFileError, ModelLoadError, UnknownModelError
from .gguf_files import materialize_gguf
from .integrity import check_weight_files, damaged_files, file_records, replace_json
from .memory import check_memory, conversion_estimate, load_estimate, memory_check_skipped
from .sources import ModelSource, cache_key, cached_dir, folder_digest, resolve, source_for_entry

__all__ = [
    "ModelSource",
    "LoadedModel",
    "resolve",
    "load_model",
    "estimate_memory_bytes",
    "cached_dir",
    "source_for_entry",
    "eos_token_ids",
    "check_device",
]

logger = logging.getLogger(__name__)


class LoadedModel(tuple):
    """``(model, tokenizer)`` that also carries ``name``, ``eos_token_ids`` and ``digest``.

    A tuple so that ``model, tokenizer = load_model(...)`` works. ``digest`` identifies the
    weights (the GGUF file's sha256, or a folder's file headers) where `load_model` knows
    it, else None. The one description of a model in this project: the API, the CLI and the
    evaluation all take it, and `unite_logits.Member.from_loaded` turns it into a member.
    """

    name: str
    eos_token_ids: list[int]
    digest: str | None

    def __new__(cls, model: Any, tokenizer: Any, name: str, digest: str | None = None) -> "LoadedModel":
        self = super().__new__(cls, (model, tokenizer))
        self.name = name
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.digest = digest
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle keep name and digest
        return (self[0], self[1], self.name, self.digest)

    @property
    def model(self) -> Any:
        return self[0]

    @property
    def tokenizer(self) -> Any:
        return self[1]


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that end generation: the generation config's, then the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return [int(i) for i in dict.fromkeys(ids)]


def _add_eos_tokens(model: Any, tokenizer: Any, tokens: tuple[str, ...]) -> None:
    """Extend the generation config's EOS ids with ``tokens`` (catalogue data)."""
    if not tokens:
        return
    vocab = tokenizer.get_vocab()
    missing = [token for token in tokens if token not in vocab]
    if missing:
        raise ModelLoadError(f"catalogue EOS tokens {missing} are not in the tokenizer's vocabulary")
    configured = model.generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    model.generation_config.eos_token_id = list(dict.fromkeys([*ids, *(vocab[t] for t in tokens)]))


def _params_in_folder(folder: Path) -> int | None:
    """Parameter count from safetensors headers (no tensor is read; bad headers raise)."""
    total = 0
    for header in check_weight_files(folder):
        for key, info in header.items():
            if key != "__metadata__":
                total += int(torch.Size(info["shape"]).numel())
    return total or None


def _params_in_gguf(path: Path) -> int | None:
    try:
        from gguf import GGUFReader
    except ImportError:
        return None  # conversion reports the missing extra with its pip command
    try:
        return sum(int(tensor.n_elements) for tensor in GGUFReader(path).tensors)
    except (ValueError, OSError, KeyError, IndexError, TypeError) as error:
        raise ModelFileError(f"{path} is not a readable GGUF file: {error}") from None


def check_device(device: str | torch.device) -> torch.device:
    """A device torch knows and this machine has; `DeviceError` (one line) otherwise."""
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if checked.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        if checked.index is not None and checked.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif checked.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but MPS is not available on this machine")
    elif checked.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return checked


def estimate_memory_bytes(spec: str | ModelSource, *, dtype: torch.dtype = torch.float32) -> int | None:
    """Peak RAM that `load_model` would need now (None when it cannot be known, e.g. a hub id).

    Converting a GGUF model the first time costs about three times its fp32 size; loading
    the converted folder costs about its size in ``dtype``.
    """
    source = spec if isinstance(spec, ModelSource) else resolve(spec)
    bytes_per_param = torch.empty((), dtype=dtype).element_size()
    if source.kind == "folder":
        assert source.path is not None
        n_params = _params_in_folder(source.path)
        return None if n_params is None else load_estimate(n_params, bytes_per_param)
    if source.kind == "hub":
        return None
    if source.entry is not None:
        n_params = source.entry.n_params
    else:
        assert source.path is not None  # a GGUF source always has its file
        n_params = _params_in_gguf(source.path)
    if n_params is None:
        return None
    if cached_dir(source) is not None:
        return load_estimate(n_params, bytes_per_param)
    return max(conversion_estimate(n_params), load_estimate(n_params, bytes_per_param))


def _cache_problems(directory: Path) -> list[str]:
    """Why a complete cache entry cannot be trusted (empty: it can). Cheap; see `integrity`."""
    try:
        marker = store.read_marker(directory)
    except (OSError, ValueError):
        return ["its marker file is unreadable"]
    records = marker.get("files")
    complete = isinstance(records, dict) and all("sample" in r for r in records.values() if isinstance(r, dict))
    problems = damaged_files(directory, records if isinstance(records, dict) else {})
    if not problems and not complete:  # written by an older conversion: verified in full just now
        try:  # record every file (with its sampled hash) so that later loads check it cheaply
            marker["files"] = file_records(directory, skip=(store.MARKER,))
            replace_json(directory / store.MARKER, marker)
        except OSError:
            pass  # a read-only cache keeps the full check
    return problems


def _not_writable(error: OSError) -> bool:
    return error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _usable_cache_entry(source: ModelSource) -> Path:
    """The verified cache folder of ``source``, converting (or repairing) it first if needed.

    A damaged entry is converted again with a warning. One process converts at a time; the
    others wait for its lock and reuse its result.
    """
    target = store.entry_dir(cache_key(source))
    problems = _cache_problems(target) if store.is_complete(target) else []
    if store.is_complete(target) and not problems:
        return target
    try:
        with store.writer_lock(target):
            if store.is_complete(target):
                problems = _cache_problems(target)
                if not problems:
                    return target  # converted meanwhile by the process we waited for
                logger.warning("the cached conversion of %s is damaged (%s); converting it again",
                               source.name, "; ".join(problems))
                store.discard(target)
            return _convert_into_cache(source)
    except OSError as error:
        if not _not_writable(error):
            raise
        damage = f" is damaged ({'; '.join(problems)}) and" if problems else ""
        raise CacheNotWritableError(
            f"the cached conversion of {source.name}{damage} cannot be written: {target.parent} is not "
            f"writable ({error.strerror}); make it writable or set {store.CACHE_ENV} to a writable folder"
        ) from None


def _convert_into_cache(source: ModelSource) -> Path:
    """Convert a GGUF-backed source into its cache folder (atomically) and return the folder."""
    target = store.entry_dir(cache_key(source))
    marker: dict[str, Any] = {"spec": source.spec, "kind": source.kind}
    if source.entry is not None:
        marker.update(catalogue_name=source.entry.name, sha256=source.entry.sha256)
    with store.atomic_directory(target, marker) as staging:
        with tempfile.TemporaryDirectory(dir=staging, prefix="gguf-") as workdir:  # gone before rename
            if source.path is not None:
                gguf_path = source.path
            else:
                assert source.entry is not None
                gguf_path = materialize_gguf(source.entry, Path(workdir))
            marker.update(convert_gguf(gguf_path, staging))
        marker["files"] = file_records(staging)  # what `_cache_problems` checks on every load
    return target


def _from_pretrained(where: str | Path, *, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load a causal LM from {str(where)!r}: {error}") from error
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]  # transformers types `to` as unbound


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    check_ram: bool = True,
) -> LoadedModel:
    """Load ``spec`` (catalogue name, HF folder, ``.gguf`` file, or hub id) as ``(model, tokenizer)``.

    fp32 by default so the ensemble sees the same logits the model would give alone.
    Stage messages go to ``logging`` (INFO); ``progress=False`` hides the progress bars of
    this call (see `unite_logits.progress` for the global switch).

    Raises:
        ModelError: a subclass (unknown model, package not installed, digest mismatch, not
            enough memory, load failure), each with a message meant for the user.
    """
    with progress_bars(progress):
        return _load(spec, device=device, dtype=dtype, check_ram=check_ram)


def _load(spec: str | os.PathLike[str], *, device: str, dtype: torch.dtype, check_ram: bool) -> LoadedModel:
    check_device(device)
    source = resolve(spec)
    if check_ram and not memory_check_skipped():
        check_memory(estimate_memory_bytes(source, dtype=dtype), f"loading {source.name}")
    started = time.perf_counter()
    where: str | Path
    digest: str | None = None
    if source.kind in ("catalogue", "gguf"):
        where = _usable_cache_entry(source)
        digest = source.entry.sha256 if source.entry is not None else source.sha256
    elif source.kind == "folder":
        assert source.path is not None  # its weight files were checked by `resolve`
        where, digest = source.path, folder_digest(source.path)
    else:
        where = source.spec
    logger.info("loading %s", source.name)
    model, tokenizer = _from_pretrained(where, device=device, dtype=dtype)
    if source.entry is not None:
        _add_eos_tokens(model, tokenizer, source.entry.extra_eos_tokens)
    if source.kind in ("catalogue", "gguf"):  # a cache path means nothing to the user
        model.config.name_or_path = source.name
    logger.info("loaded %s in %.1f s", source.name, time.perf_counter() - started)
    return LoadedModel(model, tokenizer, source.name, digest)


if __name__ == "__main__":  # python -m unite_logits.models.loading NAME...: convert into the cache
    logging.basicConfig(level=logging.INFO, format="[unite-logits] %(message)s")
    for name in sys.argv[1:] or catalogue_names():
        load_model(name)
