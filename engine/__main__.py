"""``python -m engine …`` — the engine's command line (see ``engine.cli``)."""

from .cli import main

raise SystemExit(main())
