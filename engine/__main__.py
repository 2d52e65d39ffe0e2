"""``python -m engine …`` — the engine's command line (see ``engine.app.cli``)."""

from .app.cli import main

raise SystemExit(main())
