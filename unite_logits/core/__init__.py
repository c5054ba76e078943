"""The ensembling core: tokens as bytes, the union of top-k candidates, each member kept in
step with the text, and one ensembling step. Framework-neutral beyond torch and the
tokenizers: transformers' generation loop is reached only through `unite_logits.processor`.

Modules, one job each: ``token_bytes`` (what a token stands for), ``utf8`` (characters split
across tokens), ``sync`` (a member's own ids for a growing text), ``alignment`` (the union and
each model's probability for every candidate), ``combine`` (the averaging rule), ``step`` (one
step over a batch), ``member`` (members and their runners), ``ragged_cache`` (one KV cache for
every row), ``rows`` (the rows' life cycle, and the guess), ``workers`` (members on their own
threads), ``prompts`` (a member's prompt for a row), ``chat`` (each member's chat template),
``trace`` (what a step did), ``checks`` (argument checks).
"""
