"""`python -m gateway` is the `meeting-gateway` command, for an environment without its script."""

from gateway.cli import main

raise SystemExit(main())
