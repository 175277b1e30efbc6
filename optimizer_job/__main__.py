"""``python -m optimizer_job``: the engine's command line."""

from optimizer_job.cli import main

raise SystemExit(main())
