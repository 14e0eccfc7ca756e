"""`python -m loadtest` is `relay-loadtest`."""

from loadtest.cli import main

raise SystemExit(main())
