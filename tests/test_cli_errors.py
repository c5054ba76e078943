"""Careless use of the command line and the API: one line (exit 2) or one clear exception,
never a traceback or a silent run. Models are tiny folders saved in the test's cache."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import tiny
from unite_logits.apps import cli
from unite_logits.ensemble.ensemble import generate
from unite_logits.ensemble.options import GenerationOptions
from unite_logits.ensemble.prompts import PromptError, PromptTooLongError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    """Two tiny models saved as Hugging Face folders (4096-position context windows)."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for name, make_tokenizer, seed in (("primary", tiny.byte_bpe, 0), ("aux", tiny.sp_bpe, 1)):
        tokenizer = make_tokenizer()
        tiny.tiny_llama(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths[0], paths[1]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == cli.EXIT_USAGE, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Loading weights", "[unite-logits] "))]  # bars, stages
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in err, err


def _ensemble_args(folders: tuple[str, str]) -> list[str]:
    return ["--primary", folders[0], "--aux", folders[1], "--raw", "--max-new-tokens", "2", "--no-stream"]


@pytest.mark.parametrize(("device", "needle"), [("banana", "unknown device 'banana'"), ("cuda:99", "cuda:99")])
def test_bad_device_is_one_line(folders, capsys, device, needle):
    code, out, err = run(["generate", "hi", *_ensemble_args(folders), "--device", device], capsys)
    assert_one_line(code, err, needle)


def test_seed_past_64_bits_is_one_line(folders, capsys):
    code, _, err = run(["generate", "hi", *_ensemble_args(folders), "--seed", str(2**64)], capsys)
    assert_one_line(code, err, "--seed", "2**64")


def test_lone_surrogate_in_the_prompt_is_one_line(folders, capsys):
    code, _, err = run(["generate", "caf\udce9", *_ensemble_args(folders)], capsys)
    assert_one_line(code, err, "not valid Unicode")


def test_text_file_named_gguf_is_one_line(tmp_path, folders, capsys):
    (tmp_path / "model.gguf").write_text("not a model\n")
    code, _, err = run(["generate", "hi", *_ensemble_args(folders), "--aux", str(tmp_path / "model.gguf")], capsys)
    assert_one_line(code, err, "not a GGUF file")


def test_truncated_safetensors_folder_is_one_line(tmp_path, folders, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folders[1], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    code, _, err = run(["generate", "hi", "--primary", folders[0], "--aux", str(broken), "--raw"], capsys)
    assert_one_line(code, err, "not a valid safetensors file", "truncated")


def test_prompt_file_and_stdin(tmp_path, folders, capsys, monkeypatch):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The quick brown fox " * 50, encoding="utf-8")
    code, out, err = run(["generate", "--prompt-file", str(prompt), *_ensemble_args(folders), "--json"], capsys)
    assert code == 0, err
    assert '"new_tokens": 2' in out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"The quick brown fox")))
    code, out, err = run(["generate", "-", *_ensemble_args(folders), "--json"], capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--prompt-file", "/no/such/prompt.txt"], "cannot read the prompt file"),
        (["hi", "--prompt-file", "/no/such/prompt.txt"], "not both"),
        ([], "give the prompt"),
    ],
)
def test_prompt_source_mistakes_are_one_line(folders, capsys, extra, needle):
    code, _, err = run(["generate", *extra, *_ensemble_args(folders)], capsys)
    assert_one_line(code, err, needle)


def test_prompt_file_that_is_not_utf8_is_one_line(tmp_path, folders, capsys):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    code, _, err = run(["generate", "--prompt-file", str(tmp_path / "latin1.txt"), *_ensemble_args(folders)], capsys)
    assert_one_line(code, err, "not UTF-8")


def test_prompt_past_the_primarys_context_window_is_refused_up_front(folders, capsys):
    argv = ["generate", "hi", "--primary", folders[0], "--aux", folders[1], "--raw", "--max-new-tokens", "5000"]
    code, out, err = run(argv, capsys)
    assert_one_line(code, err, "context window is 4096", "max_new_tokens=5000")
    assert out == ""


def test_api_refuses_a_string_of_models():
    with pytest.raises(TypeError, match="list of model names"):
        generate(models="smollm2-135m-instruct", prompt="hi")


def test_api_refuses_a_long_prompt_before_generating(monkeypatch):
    from testkit.tiny_ensemble import tiny_ensemble

    ensemble = tiny_ensemble()
    monkeypatch.setattr(ensemble.primary.model.config, "max_position_embeddings", 16)
    monkeypatch.setattr(ensemble.primary.model, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(PromptTooLongError, match="tiny-primary, whose context window is 16"):
        ensemble.generate("word " * 40, GenerationOptions(max_new_tokens=4))
    with pytest.raises(PromptTooLongError):
        ensemble.generate_alone(0, "word " * 40, GenerationOptions(max_new_tokens=4))
    with pytest.raises(PromptError, match="not valid Unicode"):
        ensemble.generate([{"role": "user", "content": "\ud800"}])


def test_help_and_bad_options_do_not_import_torch():
    code = (
        "import sys\n"
        "from unite_logits.apps.cli import main\n"
        "assert main(['--help']) == 0 and main(['generate', '--help']) == 0\n"
        "assert main(['generate', '--top-k', 'x', 'hi']) == 2\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr


# -- messages go through logging; bars through one switch ------------------------------------
def test_library_loads_silently_and_the_cli_shows_its_messages(folders, capsys):
    from unite_logits.models.loading import load_model

    load_model(folders[0], progress=False)
    out, err = capsys.readouterr()
    assert (out, err) == ("", ""), "the library printed"
    code, out, err = run(["generate", "hi", *_ensemble_args(folders)], capsys)
    assert code == 0, err
    assert f"[unite-logits] loading {Path(folders[0]).name}" in err


def test_progress_false_turns_off_transformers_bars_for_the_call_only(folders, capsys):
    from transformers.utils import logging as hf_logging

    from unite_logits import progress
    from unite_logits.models.loading import load_model

    assert hf_logging.is_progress_bar_enabled() and progress.progress_bars_enabled()
    load_model(folders[0], progress=False)
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled() and progress.progress_bars_enabled()
    progress.disable_progress_bars()
    try:
        with progress.progress_bars(True):  # the global switch wins
            assert not progress.progress_bars_enabled()
    finally:
        progress.enable_progress_bars()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "no scorable items"),
        (b'{"question": "q?", "answer": "x"}\n[1, 2]\n', ":2: a record has to be a JSON object"),
        (b'{"question": null, "answer": "so the answer is 4"}\n', "'question' has to be non-empty text"),
    ],
)
def test_eval_data_mistakes_are_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, content, needle):
    pytest.importorskip("lm_eval")
    from testkit.eval_tiny import write_data

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data")
    (data / "GSM" / "test.cleand.jsonl").write_bytes(content)
    code, out, err = run(["eval", "--task", "paper_gsm8k", "--data-dir", str(data), "--members", "/no/such/model",
                          "--no-progress"], capsys)
    assert_one_line(code, err, needle)


# -- the lm-eval model's --model_args ---------------------------------------------------------
@pytest.fixture
def lm_eval_logs_here(monkeypatch, capsys):
    """lm-eval's command line gives its logger handlers bound to the streams of its first run
    (an earlier test's captures, closed since): this test gets its own list, lm-eval's handler
    pointed at this test's stderr, and the list is put back afterwards."""
    import logging

    logger = logging.getLogger("lm_eval")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if type(h) is logging.StreamHandler])
    for handler in logger.handlers:
        monkeypatch.setattr(handler, "stream", sys.stderr)


LM_EVAL_DEFAULTS = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}  # what lm-eval's CLI always adds


@pytest.mark.parametrize(
    ("model_args", "needle"),
    [
        ("top_k=0", "`top_k` has to be a positive integer, but is 0"),
        ("top_k=abc", "`top_k` has to be a positive integer, but is 'abc'"),
        ("weights=1+x", "`weights` has to be numbers joined with '+'"),
        ("weights=1+2+3", "got 3 weights for 2 models"),
        ("weights=0+0", "the weights are all zero"),
        ("dtype=int8", "`dtype` has to be one of float32"),
        ("device=banana", "unknown device 'banana'"),
        ("pretrained=x,revision=y", "unknown model argument(s) for unite: pretrained, revision"),
        ("threads=0", "`threads` has to be a positive integer"),
        ("batch_size=0", "`batch_size` has to be a positive integer or 'auto'"),
        ("max_length=0", "`max_length` has to be a positive integer"),
        ("add_bos_token=maybe", "`add_bos_token` has to be true or false"),
        ("models=", "`models` has to name at least one model"),
        ("speculative=maybe", "`speculative` has to be true or false, but is 'maybe'"),
        ("speculative=2", "`speculative` has to be true or false, but is 2"),
        ("ensemble=ensemble.json", "`ensemble=FILE` defines the models and their settings; leave out models="),
    ],
)
def test_bad_lm_eval_model_args_are_one_clear_error_before_any_model_loads(folders, monkeypatch, model_args, needle):
    pytest.importorskip("lm_eval")
    from unite_logits.ensemble.ensemble import Ensemble
    from unite_logits.lm_eval import ModelArgsError, UniteLM

    for way in ("from_spec", "from_file"):  # every way the unite model builds its ensemble
        monkeypatch.setattr(Ensemble, way, lambda *a, **k: pytest.fail("a model was loaded before the arguments were checked"))
    with pytest.raises(ModelArgsError) as caught:
        UniteLM.create_from_arg_string(f"models={folders[0]}+{folders[1]},{model_args}", dict(LM_EVAL_DEFAULTS))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_lm_eval_model_args_beside_lm_evals_own_flags_are_taken_not_given_twice(folders):
    """lm-eval's command line always passes --device and --batch_size; the same keys in
    --model_args used to be a TypeError (given twice) and now win."""
    pytest.importorskip("lm_eval")
    from unite_logits.lm_eval import UniteLM

    lm = UniteLM.create_from_arg_string(f"models={folders[0]},device=cpu,batch_size=3,top_k=2", dict(LM_EVAL_DEFAULTS))
    assert lm.batch_size_per_gpu == 3 and lm.ensemble.top_k == 2
    assert UniteLM.create_from_arg_string(f"models={folders[0]}", dict(LM_EVAL_DEFAULTS)).batch_size_per_gpu == 1


def test_the_lm_eval_command_reports_bad_model_args_in_one_line(folders, tmp_path, capsys, monkeypatch,
                                                                 lm_eval_logs_here):
    pytest.importorskip("lm_eval")
    from testkit.eval_tiny import write_data

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNITE_LOGITS_DATA", str(write_data(tmp_path / "data")))
    code, out, err = run(["lm-eval", "--model_args", f"models={folders[0]},top_k=0", "--tasks", "unite_arc_easy",
                          "--limit", "1"], capsys)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == cli.EXIT_USAGE and "Traceback" not in err, err
    assert errors == ["unite-logits: error: lm-eval --model_args: `top_k` has to be a positive integer, but is 0"], err


def test_the_lm_eval_command_without_data_folder_or_cached_dataset_is_one_line(folders, tmp_path, capsys, monkeypatch,
                                                                                lm_eval_logs_here):
    pytest.importorskip("lm_eval")
    import datasets

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UNITE_LOGITS_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # an empty datasets cache
    code, out, err = run(["lm-eval", "--model_args", f"models={folders[0]}", "--tasks", "unite_piqa", "--limit", "1"],
                         capsys)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == cli.EXIT_USAGE and "Traceback" not in err and len(errors) == 1, err
    for needle in ("'baber/piqa'", str(tmp_path / "hf"), "HF_DATASETS_OFFLINE=0", "UNITE_LOGITS_DATA=DIR"):
        assert needle in errors[0], err


@pytest.mark.parametrize(("content", "needle"), [
    ("{broken", "is damaged (not JSON"),
    ('{"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["/no/such/model"]}}',
     "cannot be loaded here"),
])
def test_the_lm_eval_command_reports_a_bad_ensemble_file_in_one_line(tmp_path, capsys, monkeypatch, lm_eval_logs_here,
                                                                     content, needle):
    pytest.importorskip("lm_eval")
    from testkit.eval_tiny import write_data

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNITE_LOGITS_DATA", str(write_data(tmp_path / "data")))
    path = tmp_path / "ensemble.json"
    path.write_text(content)
    code, out, err = run(["lm-eval", "--model_args", f"ensemble={path}", "--tasks", "unite_arc_easy", "--limit", "1"],
                         capsys)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == cli.EXIT_USAGE and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith("unite-logits: error: lm-eval --model_args: `ensemble`: "), err
    assert needle in errors[0] and str(path) in errors[0], err
