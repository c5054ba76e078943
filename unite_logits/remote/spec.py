"""``SPEC@URL``: a member whose tokenizer comes from SPEC and whose model runs at URL.

SPEC is anything `unite_logits.load_model` accepts (catalogue name, local folder, ``.gguf``
file, hub id where the hub is reachable), but only the tokenizer is loaded here, never the
weights: the model runs on the server. ``gemma3-270m@http://127.0.0.1:8080`` or, without a
scheme, ``gemma3-270m@127.0.0.1:8080`` (plain http).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.errors import ModelLoadError
from .member import RemoteMember

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

__all__ = ["split_remote_spec", "load_tokenizer", "remote_member_from_spec", "served_primary_from_spec"]

_WITH_SCHEME = re.compile(r"@(?=https?://)")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}(/\S*)?$")


def split_remote_spec(text: str) -> tuple[str, str] | None:
    """``(spec, url)`` if ``text`` is ``SPEC@URL``, None if it names a local model.

    The URL starts at the first ``@http://`` or ``@https://``; without a scheme, the part
    after the last ``@`` must look like ``host:port`` (``http://`` is assumed). So a local
    path that merely contains ``@`` stays local.

    Raises:
        ValueError: ``@URL`` with nothing before it.
    """
    if "@" not in text:
        return None
    match = _WITH_SCHEME.search(text)
    if match is not None:
        spec, url = text[: match.start()], text[match.end():]
    else:
        spec, _, url = text.rpartition("@")
        if not _HOST_PORT.match(url):
            return None
        url = f"http://{url}"
    if not spec:
        raise ValueError(f"{text!r}: say where the tokenizer comes from before the @ (e.g. gemma3-270m@{url})")
    return spec, url


def _eos_ids(tokenizer: Any, folder: Path | None, extra_tokens: tuple[str, ...]) -> list[int]:
    """EOS ids: the generation config's (if the folder has one), the tokenizer's, the catalogue's extras."""
    ids: list[int] = []
    if folder is not None and (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        configured = GenerationConfig.from_pretrained(folder).eos_token_id
        ids += [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in extra_tokens if token in vocab]
    return [int(i) for i in dict.fromkeys(ids)]


def load_tokenizer(spec: str) -> tuple[Any, str, list[int]]:
    """``(tokenizer, name, eos_token_ids)`` of ``spec`` without loading its weights.

    A catalogue model or ``.gguf`` already converted loads its tokenizer from the cache in
    seconds; otherwise from the GGUF file itself (Gemma 3's 262k vocabulary: ~20 s).

    Raises:
        ModelError: unknown spec, package not installed, unreadable tokenizer.
    """
    from transformers import AutoTokenizer

    from ..models.gguf_files import materialize_gguf
    from ..models.loading import cached_dir, resolve

    source = resolve(spec)
    extra = source.entry.extra_eos_tokens if source.entry is not None else ()
    folder: Path | None = None
    try:
        if source.kind in ("catalogue", "gguf"):
            folder = cached_dir(source)
            if folder is not None:
                tokenizer = AutoTokenizer.from_pretrained(folder)
            elif source.path is not None:
                tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
            else:
                assert source.entry is not None
                with tempfile.TemporaryDirectory(prefix="unite-logits-tokenizer-") as workdir:
                    gguf = materialize_gguf(source.entry, Path(workdir))
                    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        else:
            folder = source.path
            tokenizer = AutoTokenizer.from_pretrained(source.path or source.spec)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {spec!r}: {error}") from error
    return tokenizer, source.name, _eos_ids(tokenizer, folder, extra)


def remote_member_from_spec(text: str, *, weight: float = 1.0, **options: Any) -> RemoteMember:
    """The `RemoteMember` for ``SPEC@URL``; ``options`` go to `RemoteMember` (timeout, on_error, ...).

    Raises:
        ValueError: ``text`` is not ``SPEC@URL``.
        ModelError: the tokenizer cannot be loaded; `RemoteMemberError` (a ModelError): the
            server is unreachable or serves another model.
    """
    parts = split_remote_spec(text)
    if parts is None:
        raise ValueError(f"{text!r} is not SPEC@URL (e.g. gemma3-270m@http://127.0.0.1:8080)")
    spec, url = parts
    tokenizer, name, eos_ids = load_tokenizer(spec)
    options.setdefault("name", f"{name}@{url}")
    return RemoteMember(url, tokenizer, weight=weight, eos_token_ids=eos_ids, **options)


def served_primary_from_spec(text: str, *, top_n: int | None = None, **options: Any) -> "LoadedModel":
    """The primary for ``SPEC@URL``: a `LoadedModel` whose model is a `ServedCausalLM` (the model
    runs on the server; generation, the processor and `Ensemble` use it as a local one).

    Raises:
        ValueError: ``text`` is not ``SPEC@URL``.
        ModelError: the tokenizer cannot be loaded; `RemoteMemberError`: the server is
            unreachable or serves another model.
    """
    from ..models.loading import LoadedModel
    from .primary import DEFAULT_TOP_N, ServedCausalLM

    member = remote_member_from_spec(text, **options)
    model = ServedCausalLM(member, top_n=top_n or DEFAULT_TOP_N)
    return LoadedModel(model, member.tokenizer, str(member.name))
