"""lm-evaluation-harness integration: ``import unite_logits.lm_eval`` registers model ``unite``.

* `UniteLM` (``--model unite --model_args models=A+B``): the ensemble as an lm-eval model.
* `task_folder`: the shipped tasks (``unite_piqa``, ``unite_arc_easy``,
  ``unite_arc_challenge``, ``unite_hellaswag``, the ``unite_mmlu`` group, and the paper's
  protocols ``unite_paper_gsm8k``, ``unite_paper_arc``, ``unite_paper_piqa``, ``unite_paper_mmlu``)
  written out for lm-eval's ``--include_path``: each includes lm-eval's own definition of the
  task by absolute path and, given a data folder, points it at the local data files; without
  one it is lm-eval's task over its standard dataset. The folder is made for this
  installation and data folder (in the unite-logits cache; cheap, and only once).
* `main`: ``unite-logits lm-eval ARGS`` runs lm-eval's own command line with ``unite``
  registered, ``--model unite`` unless another is given, and the shipped tasks included.

lm-eval has no plugin hook for models, hence the import (and the wrapper command). Needs the
``lm-eval`` extra: ``pip install 'unite-logits[lm-eval]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (populates lm-eval's built-in model names first: `get_model` needs them)
import lm_eval.tasks
from lm_eval.api.registry import register_model

from ..evaluation.data import DATA_ENV, offline_by_default, unavailable
from ..evaluation.errors import EvalUsageError
from .model import ModelArgsError, UniteLM

__all__ = ["ModelArgsError", "UniteLM", "task_folder", "local_data_file", "main", "TASKS"]

register_model("unite")(UniteLM)

TASKS = ("unite_piqa", "unite_arc_easy", "unite_arc_challenge", "unite_hellaswag", "unite_mmlu",
         "unite_paper_gsm8k", "unite_paper_arc", "unite_paper_piqa", "unite_paper_mmlu")
_TEMPLATES = Path(__file__).parent / "tasks"
_HELPERS = "unite_tasks.py"
_MMLU_TEMPLATE = "unite_mmlu_subject.yaml.template"


def task_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the shipped tasks for this lm-eval and data folder (made on first use).

    ``data_dir``: the benchmark data (default ``$UNITE_LOGITS_DATA``). With a folder, each
    shipped task reads its local files. Without one, each is lm-eval's own task under the
    shipped name, over its standard Hugging Face dataset (the datasets cache; offline once
    cached), and the paper's protocols, which exist only as local files, say so when loaded.

    Raises:
        EvalUsageError: a data folder is named but not there.
    """
    from ..evaluation.data import find_data_dir
    from ..models.store import cache_root

    found = find_data_dir(data_dir)
    data = None if found is None else found.resolve()
    lm_eval_tasks = Path(lm_eval.tasks.__file__).parent.resolve()
    templates = sorted(_TEMPLATES.glob("*.yaml")) + [_TEMPLATES / _MMLU_TEMPLATE, _TEMPLATES / _HELPERS]
    if data is not None:
        subjects = sorted(path.stem for path in (data / "MMLU" / "test").glob("*.jsonl"))
    else:
        subjects = sorted(path.stem.removeprefix("mmlu_") for path in (lm_eval_tasks / "mmlu" / "default").glob("mmlu_*.yaml"))
    identity = hashlib.sha256("\0".join([str(data or "standard datasets"), str(lm_eval_tasks), *subjects,
                                         *(path.read_text() for path in templates)]).encode()).hexdigest()[:16]
    folder = cache_root() / "lm-eval-tasks" / identity
    if (folder / _HELPERS).is_file():
        return folder

    def fill(text: str, subject: str = "") -> str:
        text = text if data is not None else _without_data(text)
        return text.replace("@LM_EVAL_TASKS@", str(lm_eval_tasks)).replace("@DATA@", str(data or "")).replace(
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


def _without_data(template: str) -> str:
    """A shipped task's definition for when there is no data folder: a task that includes one
    of lm-eval's keeps only that (its dataset, prompt, metrics) and its own name and tags; the
    others (groups, the paper's protocols) stay as they are, with an empty data folder."""
    lines = template.splitlines(keepends=True)
    if "@DATA@" not in template or not any(line.startswith("include:") for line in lines):
        return template
    kept = [line for line in lines if line.startswith(("include:", "task:", "tag:"))]
    return "# lm-eval's own task under the shipped name: no data folder was given.\n" + "".join(kept)


def local_data_file(task: str) -> str | None:
    """The file (relative to the data folder) a shipped task reads there, for messages: e.g.
    ``PIQA/dev_our.jsonl`` for ``unite_piqa``; None for a task that is not shipped."""
    name = task if task.startswith("unite_") else f"unite_{task}"
    if name == "unite_mmlu" or name.startswith("unite_mmlu_"):
        return "MMLU/test/<subject>.jsonl"
    path = _TEMPLATES / f"{name}.yaml"
    found = re.search(r'"@DATA@/([^"]+)"', path.read_text()) if path.is_file() else None
    return found.group(1) if found else None


def main(argv: Sequence[str]) -> int:
    """Run lm-eval's command line on ``argv`` with ``unite`` registered and the shipped tasks
    included (``--include_path``; ``--model unite`` unless ``--model`` is given). Offline:
    the Hugging Face hub and datasets are never contacted. Returns lm-eval's exit status.

    Raises:
        EvalUsageError: a bad ``--model_args`` value of the ``unite`` model (`ModelArgsError`), or
            a task's dataset that is neither local nor cached while offline.
    """
    from lm_eval.__main__ import cli_evaluate

    offline_by_default()  # too late if datasets is imported already: `unite-logits lm-eval` calls it first
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
    except ConnectionError as error:  # a task's dataset is neither local nor cached, and the hub is out of reach
        if not _raised_by_datasets(error):
            raise
        raise EvalUsageError(unavailable("lm-eval", error, data_folder=None, local_file=None)
                             + f"; a shipped unite_* task reads local files instead with {DATA_ENV}=DIR") from None
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _raised_by_datasets(error: BaseException) -> bool:
    """Whether ``error`` comes from the ``datasets`` library (a dataset it could not fetch),
    not from, say, a served model that is out of reach."""
    import traceback

    return any(f"{os.sep}datasets{os.sep}" in frame.filename for frame in traceback.extract_tb(error.__traceback__))


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
