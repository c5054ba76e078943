"""The library front: an `Ensemble` of loaded models, how to decode (`GenerationOptions`), the
one generation path (`streaming`) and prompts checked for every model (`prompts`).

Importing this package is cheap; its modules import torch and transformers when used.
"""
