"""Members served by an inference server: llama.cpp's ``llama-server`` or an OpenAI-compatible one.

``RemoteMember(url, tokenizer)`` stands where a `Member` would; its `RemoteRunner` turns
each step into one short HTTP request per row. Modules, one job each: ``protocols`` (the
request and answer formats, pure), ``client`` (HTTP with timeout and retries), ``server``
(what the server is, and whether it serves the tokenizer's model), ``runner`` (a batch of
rows to dense log-probabilities), ``member`` (the user-facing member), ``primary`` (a served
primary: `ServedCausalLM`, a transformers causal LM whose forward pass asks the server),
``spec`` (``SPEC@URL`` on the command line), ``llama_server`` (start and smoke-test
``llama-server``), ``errors``.
"""

from .errors import RemoteMemberError
from .member import RemoteMember
from .primary import ServedCausalLM
from .runner import RemoteRunner

__all__ = ["RemoteMember", "RemoteMemberError", "RemoteRunner", "ServedCausalLM"]
