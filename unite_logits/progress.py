"""One switch for every progress bar of the library, as ``transformers.utils.logging`` has.

Bars (tqdm, on stderr) are on by default; `disable_progress_bars` turns off ours and
transformers' alike, and `progress_bars` does so for a block. Messages go through
`logging` (``logging.getLogger("unite_logits")``), never ``print``, so an application
decides what it sees; the command line shows INFO messages on stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bars_enabled", "enable_progress_bars", "disable_progress_bars", "progress_bars", "progress_bar"]

_enabled = True


def progress_bars_enabled() -> bool:
    return _enabled


def enable_progress_bars() -> None:
    global _enabled
    _enabled = True


def disable_progress_bars() -> None:
    global _enabled
    _enabled = False


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Bars off for the block when not ``enabled`` (ours and transformers'), restored afterwards.

    ``enabled=True`` leaves the global switch in charge, so `disable_progress_bars` wins.
    """
    global _enabled
    previous = _enabled
    _enabled = previous and enabled
    hf_logging: Any = None
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        pass
    hf_was = hf_logging.is_progress_bar_enabled() if hf_logging is not None else None
    if hf_logging is not None and not _enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        _enabled = previous
        if hf_logging is not None and hf_was:
            hf_logging.enable_progress_bar()


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar that shows only while bars are enabled."""
    from tqdm.auto import tqdm

    return tqdm(disable=not _enabled, leave=False, **kwargs)
