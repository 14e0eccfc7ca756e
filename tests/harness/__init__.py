"""Tests of the load-test harness (`loadtest`): a short live run, and the report tools."""
