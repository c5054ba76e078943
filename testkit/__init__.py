"""Test helpers shared by ``tests/`` and ``benchmarks/``: models and tokenizers built in code,
hypothesis strategies, real-model loaders, a real llama-server and a scripted HTTP server.

Not part of the installed package: pytest finds it through ``pythonpath = .`` (setup.cfg),
benchmarks run as ``python -m benchmarks.NAME`` from the repository root. Modules:

* `testkit.tiny`: four tiny tokenizers of different kinds and random Llama/GPT-2/Gemma 3 models;
* `testkit.tiny_ensemble`: a tiny `unite_logits.Ensemble` with two chat templates;
* `testkit.strategies`: hypothesis strategies for texts (emoji, CJK, whitespace runs);
* `testkit.eval_tiny`: tiny models and data files for the evaluation tests;
* `testkit.fakes`: fake catalogue entries backed by tiny packages;
* `testkit.real_models`: the catalogue models, loaded once per session (tests marked ``real_models``);
* `testkit.llama_server`: a real ``llama-server`` on 127.0.0.1 at a free port;
* `testkit.scripted_server`: a loopback HTTP server that answers what a test scripts.
"""
