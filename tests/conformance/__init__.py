"""WebSocket conformance: the Autobahn TestSuite's server cases, run by kosoku, against the
relay's WebSocket server with an echo in place of the relay's connection handler.

`python -m tests.conformance.echo [relay serve flags]` serves the echo, `python -m
tests.conformance.run` drives the cases and prints the table (`make conformance`), and
`verdicts.py` holds the explanation of every case that does not pass. The `test_*` modules
(part of `make test`, without kosoku) check the echo's server options and the
classification. The relay endpoint itself (its sub-protocol answers every message, so it
cannot echo) is checked frame by frame in `tests/e2e/test_websocket_frames.py`.
"""
