"""``python -m dreambooth_async.emulator --port 7860``: see ``--help``."""

from ._cli import main

raise SystemExit(main())
