"""Issue 7, item 4: settings from flags, environment and a TOML file; clear errors; `config show`.

Every command here is the real `relay` command line run as a subprocess.
"""

from __future__ import annotations

import tomllib

import orjson
import pytest

from .commands import run_relay
from .support import Device, RelayProcess, error_of, new_user, offline_user


async def test_toml_file_settings_apply_to_the_running_relay(tmp_path, stores):
    config = tmp_path / "relay.toml"
    config.write_text("# a small body limit, to see it applied\nmax_body_bytes = 1000\n")
    r = RelayProcess(tmp_path / "data", {"config": config}, env=stores.new_store_env())
    try:
        r.start()
        alice = await new_user(r.url)
        bob = await offline_user(r.url)
        error_of(await alice.send_message(bob[0], body=b"x" * 1001), "too_large")
        ok = await alice.send_message(bob[0], body=b"x" * 1000)
        assert ok["t"] == "ok", ok
        await alice.close()
    finally:
        assert r.stop() == 0


async def test_relay_config_env_names_the_file(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("max_body_bytes = 1000\n")
    r = RelayProcess(tmp_path / "data", env={"RELAY_CONFIG": str(config)})
    try:
        r.start()
        alice = Device(r.url)
        await alice.register()
        bob = await offline_user(r.url)
        error_of(await alice.send_message(bob[0], body=b"x" * 1001), "too_large")
        await alice.close()
    finally:
        assert r.stop() == 0


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('port = 1111\nack_timeout = 1.5\nmax_devices = 3\nhost = "0.0.0.0"\n')
    result = run_relay(
        ["config", "show", "--format", "json", "--config", str(config), "--port", "3333"],
        env={"RELAY_PORT": "2222", "RELAY_ACK_TIMEOUT": "2.5", "RELAY_HOST": ""},
    )
    assert result.code == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert shown["config_file"] == str(config)
    settings = shown["settings"]
    assert settings["port"] == {"value": 3333, "source": "flag --port"}
    assert settings["ack_timeout"] == {"value": 2.5, "source": "env RELAY_ACK_TIMEOUT"}
    assert settings["max_devices"] == {"value": 3, "source": f"file {config}:max_devices"}
    # An empty variable counts as unset: the file's value stands.
    assert settings["host"] == {"value": "0.0.0.0", "source": f"file {config}:host"}
    assert settings["handshake_timeout"] == {"value": 10.0, "source": "default"}


def test_config_show_masks_secrets_and_prints_loadable_toml(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(
        'database_url = "postgresql://relay:pg-s3cret@db.example:5432/relay"\n'
        'redis_url = "redis://cache.example:6379/0?password=redis-s3cret"\n'
        'database_read_url = "postgresql://relay:replica-s3cret@replica.example/relay"\n'
    )
    env = {"RELAY_REGISTRATION_TOKEN": "token-s3cret"}
    as_toml = run_relay(["config", "show", "--config", str(config)], env=env)
    as_json = run_relay(["config", "show", "--config", str(config), "--format", "json"], env=env)
    for result in (as_toml, as_json):
        assert result.code == 0, result.stderr
        assert "s3cret" not in result.stdout
        assert "postgresql://relay:***@db.example:5432/relay" in result.stdout
        assert "redis://cache.example:6379/0?password=***" in result.stdout
        assert "postgresql://relay:***@replica.example/relay" in result.stdout
    shown = tomllib.loads(as_toml.stdout)
    assert shown["registration_token"] == "***"
    assert shown["port"] == 8765 and shown["retention"] == 30 * 86400.0
    assert "node_id" not in shown  # not set: printed as a comment
    assert "# node_id is not set  # default" in as_toml.stdout
    assert "# env RELAY_REGISTRATION_TOKEN" in as_toml.stdout
    settings = orjson.loads(as_json.stdout)["settings"]
    assert settings["registration_token"] == {
        "value": "***",
        "source": "env RELAY_REGISTRATION_TOKEN",
    }
    assert settings["database_url"]["source"] == f"file {config}:database_url"


BAD_SETTINGS = [
    pytest.param(
        ["--handshake-timeout=-1"],
        {},
        None,
        ["handshake_timeout must be greater than 0", "(from flag --handshake-timeout)"],
        id="negative-timeout-flag",
    ),
    pytest.param(
        [],
        {"RELAY_PORT": "70000"},
        None,
        ["port must lie in 0..65535", "(from env RELAY_PORT)"],
        id="port-out-of-range-env",
    ),
    pytest.param(
        ["--port", "eighty"],
        {},
        None,
        ["port must be an integer, not 'eighty'", "(from flag --port)"],
        id="port-not-a-number",
    ),
    pytest.param(
        [],
        {},
        'port = "80"\n',
        ["port must be an integer, not a string", "relay.toml:port)"],
        id="wrong-type-in-toml",
    ),
    pytest.param(
        [],
        {},
        "ack_timeout = true\n",
        ["ack_timeout must be a number, not a boolean", "relay.toml:ack_timeout)"],
        id="boolean-for-a-number-in-toml",
    ),
    pytest.param(
        [],
        {},
        "retention = -5\n",
        ["retention must be greater than 0", "relay.toml:retention)"],
        id="negative-in-toml",
    ),
    pytest.param(
        ["--max-registrations-per-address", "-1"],
        {},
        None,
        [
            "max_registrations_per_address must be 0 (no limit) or more",
            "(from flag --max-registrations-per-address)",
        ],
        id="negative-registration-budget",
    ),
    pytest.param(
        [],
        {"RELAY_MAX_STORED_MESSAGES": "0"},
        None,
        ["max_stored_messages must be greater than 0", "(from env RELAY_MAX_STORED_MESSAGES)"],
        id="zero-stored-message-cap",
    ),
    pytest.param(
        [],
        {},
        "prot = 8000\n",
        ["unknown setting 'prot'", "did you mean 'port'?", "relay.toml"],
        id="unknown-key",
    ),
    pytest.param(
        [],
        {},
        "port = = 1\n",
        ["relay.toml: not valid TOML"],
        id="not-toml",
    ),
    pytest.param(
        ["--database-url", "mysql://db/relay", "--redis-url", "redis://127.0.0.1:6379/0"],
        {},
        None,
        ["database_url must be a postgresql:// or postgres:// URL", "(from flag --database-url)"],
        id="bad-database-url",
    ),
    pytest.param(
        [],
        {
            "RELAY_DATABASE_URL": "postgresql://127.0.0.1/relay",
            "RELAY_REDIS_URL": "redis://127.0.0.1:port/0",
        },
        None,
        ["redis_url is not a valid", "(from env RELAY_REDIS_URL)"],
        id="redis-url-bad-port",
    ),
    pytest.param(
        [],
        {"RELAY_DATABASE_URL": "postgresql://127.0.0.1/relay"},
        None,
        [
            "database_url and redis_url go together",
            "(database_url from env RELAY_DATABASE_URL, redis_url from default)",
        ],
        id="database-url-alone",
    ),
    pytest.param(
        ["--database-read-url", "postgresql://127.0.0.1:5433/relay"],
        {},
        None,
        [
            "database_read_url needs database_url",
            "(database_read_url from flag --database-read-url, database_url from default)",
        ],
        id="read-url-without-database-url",
    ),
    pytest.param(
        [],
        {
            "RELAY_DATABASE_URL": "postgresql://127.0.0.1/relay",
            "RELAY_REDIS_URL": "redis://127.0.0.1:6379/0",
        },
        "database_read_url = 'mysql://replica/relay'\n",
        ["database_read_url must be a postgresql:// or postgres:// URL", "relay.toml"],
        id="bad-read-url",
    ),
    pytest.param(
        ["--redis-cluster"],
        {},
        None,
        ["redis_cluster needs redis_url", "(redis_cluster from flag --redis-cluster"],
        id="redis-cluster-without-url",
    ),
    pytest.param(
        [],
        {
            "RELAY_DATABASE_URL": "postgresql://127.0.0.1/relay",
            "RELAY_REDIS_URL": "redis://127.0.0.1:7000/0",
            "RELAY_REDIS_CLUSTER": "true",
            "RELAY_REDIS_PREFIX": "relay{1}:",
        },
        None,
        ["redis_prefix must not hold '{' or '}' with redis_cluster"],
        id="redis-cluster-braced-prefix",
    ),
    pytest.param(
        [],
        {"RELAY_ACK_TIMEOUT": "nan"},
        None,
        ["ack_timeout must be a finite number", "(from env RELAY_ACK_TIMEOUT)"],
        id="not-a-finite-number",
    ),
    pytest.param(
        ["--log-format", "xml"],
        {},
        None,
        ["log_format must be one of text, json", "(from flag --log-format)"],
        id="bad-log-format",
    ),
    pytest.param(
        ["--max-frame-bytes", "1000"],
        {},
        None,
        [
            "max_body_bytes must be smaller than max_frame_bytes",
            "(max_body_bytes from default, max_frame_bytes from flag --max-frame-bytes)",
        ],
        id="frame-limit-below-body-limit",
    ),
    pytest.param(
        [],
        {"RELAY_RATE_BACKUP_READS": "0"},
        None,
        ["rate_backup_reads must be greater than 0"],
        id="no-backup-reads",
    ),
]


@pytest.mark.parametrize(("args", "env", "toml", "expected"), BAD_SETTINGS)
def test_bad_setting_stops_serve_with_a_clear_message(tmp_path, args, env, toml, expected):
    argv = ["serve", *args]
    env = {"RELAY_PORT": "0", "RELAY_DATA_DIR": str(tmp_path / "data"), **env}
    if toml is not None:
        config = tmp_path / "relay.toml"
        config.write_text(toml)
        argv += ["--config", str(config)]
    result = run_relay(argv, env=env, timeout_s=20)
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay: bad setting: ")
    for part in expected:
        assert part in lines[0]
    assert "serving on" not in result.stdout
    assert not (tmp_path / "data").exists(), "nothing is created before the settings are valid"


def test_missing_config_file(tmp_path):
    result = run_relay(
        ["serve", "--port", "0", "--config", str(tmp_path / "absent.toml")], timeout_s=20
    )
    assert result.code == 2
    assert "absent.toml: cannot read it" in result.stderr
