"""``python -m dreambooth_async.cli``: the ``dreambooth-async`` command."""

from . import main

raise SystemExit(main())
