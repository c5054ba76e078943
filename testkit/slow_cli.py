"""``python -m testkit.slow_cli DELAY ARGS...``: the ``unite-logits ARGS`` command, every Llama
forward pass DELAY seconds slower.

The command is the real one (`unite_logits.apps.cli.main`, signal handling and all); only the
models are slowed, so that a test can send a signal while a request is surely in flight.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    from transformers import LlamaForCausalLM

    from unite_logits.apps.cli import main as unite_logits

    delay = float(argv[0])
    forward = LlamaForCausalLM.forward

    def slow_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return forward(self, *args, **kwargs)

    LlamaForCausalLM.forward = slow_forward  # type: ignore[method-assign]
    return unite_logits(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
