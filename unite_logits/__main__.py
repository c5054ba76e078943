"""``python -m unite_logits`` runs the ``unite-logits`` command."""

import sys

from .apps.cli import main

sys.exit(main())
