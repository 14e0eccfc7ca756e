"""`python -m relay` runs the command line."""

from relay.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
