"""Turn a GGUF file into an ordinary Hugging Face folder (fp32), once.

Loading GGUF dequantizes every tensor in Python and takes tens of seconds; a saved HF folder
reloads in seconds. transformers refuses ``save_pretrained`` on a GGUF-loaded model ("not
serializable"), so the weights are moved into a model rebuilt from a copy of the config
without its ``quantization_config``. The saved folder is reloaded and its logits compared
with the GGUF model's before the conversion counts as done.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from .errors import ModelLoadError

__all__ = ["convert_gguf"]

logger = logging.getLogger(__name__)

_PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3"
_MAX_LOGIT_DRIFT = 1e-4


def _import_transformers():
    try:
        import accelerate  # noqa: F401  transformers needs it for GGUF
        import gguf  # noqa: F401
        import transformers
    except ImportError as error:
        raise ModelLoadError(
            f"converting GGUF needs the optional packages gguf and accelerate ({error}); "
            "install them with: pip install 'unite-logits[models]'"
        ) from None
    return transformers


def _without_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a plain model that ``save_pretrained`` accepts."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


@torch.no_grad()
def _probe_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write tokenizer and fp32 model of ``gguf_path`` into ``out_dir``; return facts about it.

    Raises:
        ModelLoadError: a needed package is missing, transformers cannot read the file, or
            the saved folder does not reproduce the GGUF model's logits.
    """
    transformers = _import_transformers()
    return _convert(transformers, gguf_path, out_dir)


def _convert(transformers: Any, gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    folder, filename = str(gguf_path.parent), gguf_path.name
    logger.info("converting %s to a cached fp32 folder (one time; tens of seconds)", filename)
    try:
        logger.info("reading tokenizer from GGUF")
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        logger.info("dequantizing weights")
        gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        ).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"transformers cannot load {gguf_path}: {error}") from error

    probe = torch.tensor([tokenizer(_PROBE_TEXT)["input_ids"]])
    reference = _probe_logits(gguf_model, probe)
    model = _without_quantization(gguf_model)
    del gguf_model
    gc.collect()

    logger.info("saving")
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    drift = (_probe_logits(reloaded, probe) - reference).abs().max().item()
    del reloaded
    if not drift <= _MAX_LOGIT_DRIFT:
        raise ModelLoadError(f"converted {filename} does not reproduce its logits (max drift {drift:g})")
    seconds = time.perf_counter() - started
    logger.info("converted %s in %.1f s", filename, seconds)
    return {
        "source_file": filename,
        "n_params": n_params,
        "conversion_seconds": round(seconds, 2),
        "max_logit_drift": drift,
        "transformers_version": transformers.__version__,
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }
