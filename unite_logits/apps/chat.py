"""``unite-logits chat``: a multi-turn conversation with an ensemble in the terminal.

Every turn, each member formats the whole conversation with its own chat template (the
ensemble's earlier answers included), and the answer is printed as it is generated.
``/reset`` starts over, ``/exit`` (or end of input) leaves, Ctrl-C stops the answer in
progress and keeps the conversation. Without a terminal on stdin (a pipe, a file) each
line is one user turn and only the answers are printed.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from jinja2 import TemplateError

from ..core.chat import has_chat_template
from ..ensemble.options import GenerationOptions
from ..ensemble.prompts import PromptError
from ..ensemble.streaming import Piece

__all__ = ["ChatSession", "run_chat", "COMMANDS"]

COMMANDS = {"/reset": "forget the conversation", "/exit": "leave (also /quit, or Ctrl-D)"}
INTERRUPTED = "[interrupted]"


class ChatSession:
    """The conversation so far, and one ensembled answer per user turn."""

    def __init__(self, ensemble: Any, options: GenerationOptions, system: str | None = None) -> None:
        self.ensemble = ensemble
        self.options = options
        self.system = system
        self.history: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def answer(self, text: str, out: TextIO, cancel: threading.Event) -> str:
        """Stream the ensemble's reply to ``text`` into ``out``; returns the finish reason.

        The reply, as far as it got, joins the history (an interrupted one too: the user saw it).
        """
        self.history.append({"role": "user", "content": text})

        def show(piece: Piece) -> None:
            out.write(piece.text)
            out.flush()

        result = self.ensemble.generate(self.history, self.options, chat=True, on_piece=show, cancel=cancel)
        self.history.append({"role": "assistant", "content": result.text})
        return result.finish_reason


@contextmanager
def _ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """While inside, SIGINT sets ``flag`` instead of raising (main thread only; elsewhere no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _lines(stdin: TextIO, out: TextIO, interactive: bool) -> Iterator[str]:
    """User turns: ``input()`` with a prompt on a terminal (line editing), plain lines otherwise."""
    if interactive:
        try:  # line editing and history for input(); it also writes the prompt to stdout, not stderr
            import readline  # noqa: F401
        except ImportError:
            pass
    while True:
        if not interactive:
            line = stdin.readline()
            if not line:
                return
            yield line.rstrip("\n")
            continue
        try:
            yield input(">>> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(/exit or Ctrl-D leaves)\n")


def run_chat(
    ensemble: Any,
    options: GenerationOptions,
    *,
    system: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> int:
    """Hold a conversation on ``stdin``/``out`` until ``/exit`` or end of input; returns 0."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    if interactive is None:
        interactive = stdin.isatty()
    if not has_chat_template(ensemble.primary.tokenizer):
        warnings.warn(f"{ensemble.primary.name} has no chat template; it reads the conversation as plain text",
                      stacklevel=2)
    session = ChatSession(ensemble, options, system)
    if interactive:
        names = " + ".join(m.name for m in ensemble.models)
        commands = ", ".join(COMMANDS)
        out.write(f"Chatting with {names}. Ctrl-C stops an answer; {commands}.\n")
    for line in _lines(stdin, out, interactive):
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            if interactive:
                out.write("(conversation reset)\n")
            continue
        if text in ("/help", "/?"):
            out.write("".join(f"{name}  {meaning}\n" for name, meaning in COMMANDS.items()))
            continue
        cancel = threading.Event()
        try:
            with _ctrl_c_sets(cancel):
                reason = session.answer(text, out, cancel)
        except (PromptError, TemplateError) as error:  # outgrew the context window, a template refuses it
            session.history.pop()
            print(f"unite-logits chat: {error} (/reset starts over)", file=sys.stderr)
            continue
        out.write(f" {INTERRUPTED}\n" if reason == "cancelled" else "\n")
        out.flush()
    return 0
