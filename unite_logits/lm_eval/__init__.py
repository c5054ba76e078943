"""lm-evaluation-harness integration: ``import unite_logits.lm_eval`` registers model ``unite``.

* `UniteLM` (``--model unite --model_args models=A+B``): the ensemble as an lm-eval model.
* `task_folder`: the shipped offline tasks (``unite_piqa``, ``unite_arc_easy``,
  ``unite_arc_challenge``, ``unite_hellaswag``, the ``unite_mmlu`` group, and the paper's
  protocols ``unite_paper_gsm8k``, ``unite_paper_arc``, ``unite_paper_piqa``, ``unite_paper_mmlu``)
  written out for lm-eval's ``--include_path``: each includes lm-eval's own definition of the
  task by absolute path and points it at the local data files, so the folder is made for this
  installation and data directory (in the unite-logits cache; cheap, and only once).
* `main`: ``unite-logits lm-eval ARGS`` runs lm-eval's own command line with ``unite``
  registered, ``--model unite`` unless another is given, and the shipped tasks included.

lm-eval has no plugin hook for models, hence the import (and the wrapper command). Needs the
``lm-eval`` extra: ``pip install 'unite-logits[lm-eval]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (populates lm-eval's built-in model names first: `get_model` needs them)
import lm_eval.tasks
from lm_eval.api.registry import register_model

from ..evaluation.errors import EvalUsageError
from .model import ModelArgsError, UniteLM

__all__ = ["ModelArgsError", "UniteLM", "task_folder", "main", "TASKS"]

register_model("unite")(UniteLM)

TASKS = ("unite_piqa", "unite_arc_easy", "unite_arc_challenge", "unite_hellaswag", "unite_mmlu",
         "unite_paper_gsm8k", "unite_paper_arc", "unite_paper_piqa", "unite_paper_mmlu")
_TEMPLATES = Path(__file__).parent / "tasks"
_HELPERS = "unite_tasks.py"
_MMLU_TEMPLATE = "unite_mmlu_subject.yaml.template"


def task_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the shipped tasks for this lm-eval and data directory (made on first use).

    ``data_dir``: the benchmark data (default ``$UNITE_LOGITS_DATA``, else ``../shared/data``).

    Raises:
        EvalUsageError: the data directory is not there.
    """
    from ..evaluation.data import resolve_data_dir
    from ..models.store import cache_root

    data = resolve_data_dir(data_dir).resolve()
    lm_eval_tasks = Path(lm_eval.tasks.__file__).parent.resolve()
    templates = sorted(_TEMPLATES.glob("*.yaml")) + [_TEMPLATES / _MMLU_TEMPLATE, _TEMPLATES / _HELPERS]
    subjects = sorted(path.stem for path in (data / "MMLU" / "test").glob("*.jsonl"))
    identity = hashlib.sha256("\0".join([str(data), str(lm_eval_tasks), *subjects,
                                         *(path.read_text() for path in templates)]).encode()).hexdigest()[:16]
    folder = cache_root() / "lm-eval-tasks" / identity
    if (folder / _HELPERS).is_file():
        return folder

    def fill(text: str, subject: str = "") -> str:
        return text.replace("@LM_EVAL_TASKS@", str(lm_eval_tasks)).replace("@DATA@", str(data)).replace(
            "@SUBJECT@", subject)

    staging = folder.with_name(f".{identity}.{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    for template in _TEMPLATES.glob("*.yaml"):
        (staging / template.name).write_text(fill(template.read_text()))
    mmlu = (_TEMPLATES / _MMLU_TEMPLATE).read_text()
    for subject in subjects:
        (staging / f"unite_mmlu_{subject}.yaml").write_text(fill(mmlu, subject))
    shutil.copy(_TEMPLATES / _HELPERS, staging / _HELPERS)
    try:
        os.replace(staging, folder)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def main(argv: Sequence[str]) -> int:
    """Run lm-eval's command line on ``argv`` with ``unite`` registered and the shipped tasks
    included (``--include_path``; ``--model unite`` unless ``--model`` is given). Offline:
    the Hugging Face hub and datasets are never contacted. Returns lm-eval's exit status.

    Raises:
        EvalUsageError: a bad ``--model_args`` value of the ``unite`` model (`ModelArgsError`).
    """
    from lm_eval.__main__ import cli_evaluate

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = list(argv)
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", "unite", *args]
    saved = sys.argv
    sys.argv = ["lm_eval", *args]
    try:
        with _shipped_tasks_included(None if any(a in ("-h", "--help") for a in args) else task_folder()):
            cli_evaluate()
    except ModelArgsError as error:  # a mistake in --model_args: one line, as for the other commands' flags
        raise EvalUsageError(f"lm-eval --model_args: {error}") from None
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0


@contextlib.contextmanager
def _shipped_tasks_included(folder: Path | None) -> Iterator[None]:
    """While lm-eval's command line runs, every `TaskManager` it makes also reads ``folder``.

    lm-eval's ``--include_path`` takes one folder, so adding ours to the arguments would
    replace a folder the user gave; joining it to theirs where the manager is made keeps both.
    """
    if folder is None:
        yield
        return
    from lm_eval.tasks import TaskManager

    original = TaskManager.__init__

    def init(self: Any, *args: Any, include_path: Any = None, **kwargs: Any) -> None:
        paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        if str(folder) not in map(str, paths):
            paths.append(folder)
        original(self, *args, include_path=paths, **kwargs)

    TaskManager.__init__ = init
    try:
        yield
    finally:
        TaskManager.__init__ = original
