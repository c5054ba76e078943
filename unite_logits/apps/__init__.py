"""The applications built on the library: the ``unite-logits`` command line (`cli`), the chat
in a terminal (`chat`) and the OpenAI-compatible server (`serving`)."""
