"""The lm-eval integration end to end, offline, on tiny models saved as folders and the local data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from testkit.tiny_ensemble import save_tiny_pair  # noqa: E402
from unite_logits.evaluation.data import resolve_data_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The benchmark files (``../shared/data``): CI has them; a checkout without skips."""
    try:
        return resolve_data_dir()
    except Exception as error:  # noqa: BLE001 - the guard below says why
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise
        pytest.skip(f"no benchmark data here ({error})")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    """A tiny primary (byte-level BPE, ChatML) and auxiliary (SentencePiece BPE, brackets) as folders."""
    return save_tiny_pair(tmp_path_factory.mktemp("lm-eval-models"))


@pytest.fixture(scope="module")
def tasks(data_dir) -> TaskManager:
    import unite_logits.lm_eval as integration

    return TaskManager(include_path=str(integration.task_folder(data_dir)), include_defaults=False)


def evaluate(model: str, model_args: dict, task_manager: TaskManager, task: str, limit: int) -> dict:
    import unite_logits.lm_eval  # noqa: F401  (registers unite)

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], limit=limit,
                                   task_manager=task_manager, log_samples=True, bootstrap_iters=0,
                                   batch_size=3, device="cpu")


def resps(results: dict, task: str) -> list[list[float]]:
    return [[float(r[0][0]) for r in sample["resps"]] for sample in results["samples"][task]]  # per choice, repeat 0


def test_unite_is_registered_beside_the_built_in_models():
    import unite_logits.lm_eval as integration
    from lm_eval.api.registry import get_model

    assert get_model("unite") is integration.UniteLM
    assert get_model("hf").__name__ == "HFLM"


def test_one_model_unite_reproduces_hf_per_sample(folders, tasks, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    ours = evaluate("unite", {"models": folders[1]}, tasks, "unite_arc_easy", 4)
    reference = evaluate("hf", {"pretrained": folders[1], "dtype": "float32"}, tasks, "unite_arc_easy", 4)
    got, expected = resps(ours, "unite_arc_easy"), resps(reference, "unite_arc_easy")
    assert len(got) == 4 and all(len(row) >= 3 for row in got)
    for row, reference_row in zip(got, expected):
        assert row == pytest.approx(reference_row, abs=1e-4)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["unite_arc_easy"][metric] == reference["results"]["unite_arc_easy"][metric]


def test_the_command_runs_an_ensemble_offline_and_logs_samples(folders, data_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT), "UNITE_LOGITS_DATA": str(data_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "unite_logits", "lm-eval", "--model_args", f"models={folders[0]}+{folders[1]},top_k=4",
         "--tasks", "unite_piqa", "--limit", "3", "--batch_size", "2", "--log_samples", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unite_piqa" in result.stdout and "acc" in result.stdout  # lm-eval's table
    (results_file,) = out.rglob("results_*.json")
    (samples_file,) = out.rglob("samples_unite_piqa_*.jsonl")
    assert json.loads(results_file.read_text())["results"]["unite_piqa"]["acc,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert len(samples_file.read_text().splitlines()) == 3


def test_generate_until_stops_at_until_and_max_gen_toks(folders):
    from unite_logits.lm_eval import UniteLM

    lm = UniteLM(models=f"{folders[0]}+{folders[1]}", top_k=4, batch_size=2)
    free = lm.generate_until([Instance("generate_until", {}, ("The quick brown fox", {"max_gen_toks": 8}), 0)])[0]
    assert free
    stop = free[2:4]
    cut = lm.generate_until([Instance("generate_until", {}, ("The quick brown fox", {"until": [stop], "max_gen_toks": 8}), 0),
                             Instance("generate_until", {}, ("Numbers: 1, 2, 3", {"max_gen_toks": 3}), 1)])
    assert cut[0] == free[: free.find(stop)]
    alone = lm.generate_until([Instance("generate_until", {}, ("Numbers: 1, 2, 3", {"max_gen_toks": 3}), 0)])[0]
    assert cut[1] == alone  # a row of a batch answers as alone
    from unite_logits import GenerationOptions

    direct = lm.ensemble.generate("Numbers: 1, 2, 3", GenerationOptions(max_new_tokens=3))
    assert direct.text == alone and direct.completion_tokens == 3


def test_each_member_reads_a_chat_in_its_own_template(folders, monkeypatch):
    from unite_logits.lm_eval import UniteLM

    lm = UniteLM(models=f"{folders[0]}+{folders[1]}", top_k=4)
    history = [{"role": "user", "content": "What is 12 plus 30?"}]
    context = lm.apply_chat_template(history)
    assert context.startswith("<|im_start|>user") and context.endswith("<|im_start|>assistant\n")
    seen = []
    score = lm.scorer.score
    monkeypatch.setattr(lm.scorer, "score", lambda requests, **kw: seen.extend(requests) or score(requests, **kw))
    ((logprob, _),) = lm.loglikelihood([Instance("loglikelihood", {}, (context, "42"), 0)])
    (member_ids,) = seen[0].member_prompts
    member = lm.ensemble.models[1].tokenizer.decode(member_ids)
    assert "[USER] What is 12 plus 30?" in member and member.endswith("[ASSISTANT] ") and logprob < 0
    plain = lm.loglikelihood([Instance("loglikelihood", {}, ("What is 12 plus 30?", " 42"), 0)])
    assert seen[1].member_prompts is None and plain[0][0] < 0


def test_model_arguments_are_checked_in_one_line(folders):
    from unite_logits.lm_eval import UniteLM

    with pytest.raises(ValueError, match="needs `models=`"):
        UniteLM()
    with pytest.raises(ValueError, match="unknown model argument.*pretrained"):
        UniteLM(models=folders[0], pretrained="x")
    with pytest.raises(ValueError, match="`dtype` has to be one of"):
        UniteLM(models=folders[0], dtype="int8")
    with pytest.raises(ValueError, match="one weight|weights for"):
        UniteLM(models=folders[0], weights="1+2")
    with pytest.raises(ValueError, match="`ensemble=FILE` defines the models and their settings; leave out weights=, top_k="):
        UniteLM(ensemble="ensemble.json", weights="1+2", top_k=3)


def test_an_ensemble_file_is_that_ensemble_and_scores_as_its_models_and_weights_by_hand(folders, tmp_path):
    """``--model_args ensemble=FILE`` loads exactly the file's ensemble: the same log-likelihoods
    as ``models=...,weights=...,top_k=...`` given by hand, and lm-eval records its spec."""
    from unite_logits.ensemble.spec import EnsembleFile, EnsembleSpec, write_ensemble_file
    from unite_logits.lm_eval import UniteLM

    spec = EnsembleSpec(list(folders), [1.0, 0.3], top_k=4)
    path = write_ensemble_file(tmp_path / "ensemble.json",
                               EnsembleFile(spec, decoding={"max_new_tokens": 8, "speculative": False}))
    from_file = UniteLM.create_from_arg_string(f"ensemble={path}", {"batch_size": 2, "device": "cpu"})
    by_hand = UniteLM.create_from_arg_string(f"models={folders[0]}+{folders[1]},weights=1+0.3,top_k=4",
                                             {"batch_size": 2, "device": "cpu"})
    plain = UniteLM.create_from_arg_string(f"models={folders[0]}+{folders[1]},top_k=4", {"batch_size": 2})
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(
        [("The quick brown fox", " jumps over"), ("Question: What is 12 plus 30? Answer:", " 42"), ("Hello", " world")])]
    scores = from_file.loglikelihood(requests)
    assert scores == by_hand.loglikelihood(requests)
    assert scores != plain.loglikelihood(requests)  # the file's weights do count
    assert from_file.get_model_info() == {"unite_ensemble": spec.to_dict(), "unite_speculative": False}  # the file's
    assert by_hand.get_model_info()["unite_ensemble"] == spec.to_dict() and by_hand.ensemble.speculative
    again = UniteLM.create_from_arg_string(f"ensemble={path},speculative=true", {"batch_size": 2})
    assert again.ensemble.speculative and again.ensemble.spec == spec  # the argument wins over the file
    request = [Instance("generate_until", {}, ("The quick brown fox", {"max_gen_toks": 4}), 0)]
    for lm, drafted in ((from_file, False), (again, True)):  # generate_until decodes as it says
        assert lm.generate_until(request)[0]
        assert (lm.ensemble.last_speculation is not None) == drafted


EXPECTED_DOCS = {"unite_piqa": 1838, "unite_arc_easy": 570, "unite_arc_challenge": 1150, "unite_hellaswag": 10042,
                 "unite_paper_gsm8k": 1319, "unite_paper_piqa": 1838}


@pytest.mark.parametrize("task", list(EXPECTED_DOCS))
def test_every_shipped_task_loads_offline_with_its_documents(tasks, task, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    built = tasks.load([task])["tasks"][task]
    assert len(list(built.eval_docs)) == EXPECTED_DOCS[task]


def test_the_mmlu_group_holds_every_subject(tasks, data_dir):
    subjects = sorted(p.stem for p in (data_dir / "MMLU" / "test").glob("*.jsonl"))
    assert len(subjects) == 57
    names = set(tasks.all_tasks)
    assert {f"unite_mmlu_{s}" for s in subjects} <= names and "unite_mmlu" in names


def test_without_a_data_folder_the_shipped_names_are_lm_evals_own_tasks(data_dir, monkeypatch, tmp_path):
    """No folder outside the package is assumed: with no data folder each shipped name is
    lm-eval's own task definition, dataset and all, under that name."""
    import lm_eval.tasks as own_tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    import unite_logits.lm_eval as integration

    monkeypatch.delenv("UNITE_LOGITS_DATA", raising=False)
    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path))
    folder = integration.task_folder()
    assert folder != integration.task_folder(data_dir)  # one folder per data folder (or none)
    names = set(TaskManager(include_path=str(folder), include_defaults=False).all_tasks)
    assert set(integration.TASKS) <= names and len([n for n in names if n.startswith("unite_mmlu_") and n != "unite_mmlu_tasks"]) == 57
    lm_eval_tasks = Path(own_tasks.__file__).parent
    for shipped, own in (("unite_piqa", "piqa/piqa.yaml"), ("unite_arc_easy", "arc/arc_easy.yaml"),
                         ("unite_arc_challenge", "arc/arc_challenge.yaml"), ("unite_hellaswag", "hellaswag/hellaswag.yaml"),
                         ("unite_mmlu_anatomy", "mmlu/default/mmlu_anatomy.yaml")):
        ours = load_yaml(folder / f"{shipped}.yaml", resolve_func=False)
        theirs = load_yaml(lm_eval_tasks / own, resolve_func=False)
        assert ours.pop("task") == shipped and theirs.pop("task") != shipped
        ours.pop("tag", None), theirs.pop("tag", None)
        assert ours == theirs and ours["dataset_path"] != "json", shipped
    local = load_yaml(integration.task_folder(data_dir) / "unite_piqa.yaml", resolve_func=False)
    assert local["dataset_path"] == "json" and str(data_dir.resolve()) in str(local["dataset_kwargs"])


def test_the_command_keeps_a_users_own_include_path_beside_the_shipped_tasks(data_dir, tmp_path):
    """lm-eval's ``--include_path`` takes one folder: the wrapper joins the shipped one to the user's."""
    import unite_logits.lm_eval as integration

    shipped = integration.task_folder(data_dir)
    mine = tmp_path / "my_tasks"
    mine.mkdir()
    (mine / "my_piqa.yaml").write_text(f"include: {shipped / 'unite_piqa.yaml'}\ntask: my_piqa\n")
    with integration._shipped_tasks_included(shipped):
        known = TaskManager(include_path=str(mine), include_defaults=False).all_tasks
    assert "my_piqa" in known and "unite_piqa" in known
    assert "unite_piqa" not in TaskManager(include_path=str(mine), include_defaults=False).all_tasks  # restored


def test_generate_until_samples_with_do_sample_and_temperature(folders):
    import torch

    from unite_logits.lm_eval import UniteLM

    lm = UniteLM(models=f"{folders[0]}+{folders[1]}", top_k=4, batch_size=2)

    def answer(**gen_kwargs):
        return lm.generate_until([Instance("generate_until", {}, ("The quick brown fox", {"max_gen_toks": 12, **gen_kwargs}), 0)])[0]

    greedy = answer()
    torch.manual_seed(0)
    first = answer(do_sample=True, temperature=5.0)
    torch.manual_seed(0)
    again = answer(do_sample=True, temperature=5.0)
    assert first == again  # sampling follows torch's seed, as lm-eval seeds it
    assert first != greedy  # a near-flat distribution over the union: 12 draws all greedy is ~impossible
    assert answer(do_sample=False, temperature=5.0) == greedy  # temperature without do_sample: greedy
