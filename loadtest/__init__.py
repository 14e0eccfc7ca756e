"""Load-test harness: simulated devices that speak the wire protocol (a client like any other)."""
