"""``unite-logits serve``: the ensemble behind an OpenAI-compatible HTTP API.

`create_app` builds the FastAPI application (`app`), requests are validated by `schemas`,
requests that arrive together run as rows of one batch on the `worker` thread, responses take the shapes of
`openai_format`; `server` runs it all with uvicorn. Needs the ``serve`` extra
(``pip install unite-logits[serve]``: fastapi, uvicorn).
"""

from .app import ServerSettings, create_app
from .server import BackgroundServer, serve

__all__ = ["ServerSettings", "create_app", "serve", "BackgroundServer"]
