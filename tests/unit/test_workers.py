"""The parent of `relay serve --workers N`: its restart policy, and each worker's command line."""

from __future__ import annotations

import argparse
import socket

import pytest

from relay.config_sources import add_settings_arguments, given_flags, load_settings
from relay.workers import (
    WORKER_SETTINGS,
    FailureWindow,
    PortUnavailable,
    RestartPolicy,
    plan_workers,
    reserve_port,
)

PRODUCTION = {"RELAY_DATABASE_URL": "postgresql://db/relay", "RELAY_REDIS_URL": "redis://cache"}


def test_restart_delays_double_up_to_the_cap_then_give_up():
    policy = RestartPolicy(max_failures=5, first_delay_s=0.25, max_delay_s=1.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, None]


def test_deaths_leave_the_window():
    window = FailureWindow(window_s=60.0)
    assert [window.record(t) for t in (0.0, 10.0, 59.0)] == [1, 2, 3]
    assert window.record(60.0) == 3  # the death at 0 is a window old
    assert window.record(200.0) == 1


def _parsed(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(argv)


def test_every_worker_gets_the_operators_flags_and_its_own():
    args = _parsed(
        [
            *("--workers", "3", "--node-id", "eu1", "--port", "0"),
            *("--admin-listen", "[::1]:9100", "--registration-token=-starts-with-a-dash"),
            "--no-migrate",
        ]
    )
    settings = load_settings(args, PRODUCTION).settings
    plan = plan_workers(settings, given_flags(args, WORKER_SETTINGS), lambda: "unused")
    argv = plan.argv(3, 40000)
    assert argv[argv.index("relay") + 1 :] == [
        "serve",
        "--no-migrate",  # in the order of the settings
        "--registration-token=-starts-with-a-dash",
        "--workers=1",
        "--port=40000",
        "--node-id=eu1-w3",
        "--admin-listen=[::1]:9102",
        "--worker-index=3",
    ]
    # What the worker parses from it: the operator's values, and its own.
    worker = load_settings(_parsed(argv[argv.index("serve") + 1 : -1]), PRODUCTION).settings
    assert (worker.workers, worker.port, worker.node_id) == (1, 40000, "eu1-w3")
    assert (worker.registration_token, worker.migrate) == ("-starts-with-a-dash", False)


def test_node_ids_from_one_random_base_and_admin_port_zero_for_each():
    args = _parsed(["--workers", "2", "--admin-listen", "127.0.0.1:0"])
    plan = plan_workers(load_settings(args, PRODUCTION).settings, [], lambda: "node-ab12")
    assert [plan.node_id(i) for i in (1, 2)] == ["node-ab12-w1", "node-ab12-w2"]
    assert "--admin-listen=127.0.0.1:0" in plan.argv(2, 1234)


def test_the_port_is_reserved_for_the_workers_only():
    with reserve_port("127.0.0.1", 0) as reservation:
        port = reservation.getsockname()[1]
        with socket.socket() as other, pytest.raises(OSError):  # no SO_REUSEPORT: refused
            other.bind(("127.0.0.1", port))
        with socket.socket() as worker:  # a worker's socket joins it
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
        with pytest.raises(PortUnavailable, match="Address already in use"):
            reserve_port("127.0.0.1", port)  # a second relay on the same port
