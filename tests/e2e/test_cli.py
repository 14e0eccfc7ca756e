"""The command lines as an operator meets them: `--version`, each subcommand's own options,
the store commands' settings (`purge`, `devices`, `migrate --config`) and `relay docs`.

Every command here is the real `relay` (or `relay-loadtest`) run as a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import fields
from pathlib import Path

import orjson
import pytest

from relay.config import MIGRATE_SETTINGS, PURGE_SETTINGS, STORE_SETTINGS, Settings
from relay.config_sources import flag_name

from .commands import COMMAND_TIMEOUT_S, arun_relay, run_relay
from .stores import empty_database
from .support import REPO_ROOT, new_user

ALL_SETTINGS = frozenset(f.name for f in fields(Settings))
OPTION_LINE = re.compile(r"^  (?:-h, )?(--[a-z][a-z-]*)", re.MULTILINE)


def _options(help_text: str) -> set[str]:
    """The options a `--help` defines (not the ones its help texts mention)."""
    return set(OPTION_LINE.findall(help_text))


def _option_help(help_text: str, flag: str) -> str:
    """The help of one option: its line and the indented lines after it."""
    lines = help_text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.lstrip().startswith((f"{flag} ", f"{flag},"))
    )
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 8):  # the next option, a section title or a blank line
            break
        block.append(line)
    return " ".join(part.strip() for part in block)


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An installed console script of this environment, as a pip user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _toml_string(value: object) -> str:
    return orjson.dumps(str(value)).decode("utf-8")


# --- --version ---------------------------------------------------------------------------


def test_version_is_the_package_version():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert importlib.metadata.version("relay") == declared
    module = run_relay(["--version"])
    assert (module.code, module.stdout, module.stderr) == (0, f"relay {declared}\n", "")
    for script in ("relay", "relay-loadtest"):
        done = _run_script(script, "--version")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{script} {declared}\n"


# --- each subcommand lists its own options -----------------------------------------------


@pytest.mark.parametrize(
    ("command", "settings", "own"),
    [
        (["purge"], PURGE_SETTINGS, set()),
        (["devices"], STORE_SETTINGS, {"--json"}),
        (["audit"], STORE_SETTINGS, {"--json", "--since"}),
        (["migrate"], MIGRATE_SETTINGS, {"--to", "--check"}),
        (["serve"], ALL_SETTINGS, set()),
        (["config", "show"], ALL_SETTINGS, {"--format"}),
    ],
)
def test_each_command_lists_its_own_options(command, settings, own):
    result = run_relay([*command, "--help"])
    assert result.code == 0, result.stderr
    expected = {"--help", "--config", *own, *(flag_name(name) for name in settings)}
    assert _options(result.stdout) == expected
    if settings is not ALL_SETTINGS:
        assert "--port" not in result.stdout and "--log-level" not in result.stdout
        assert "serve settings" not in result.stdout


def test_serve_help_groups_the_settings_and_shows_one_default_each():
    result = run_relay(["serve", "--help"])
    assert result.code == 0, result.stderr
    assert "\nstore settings:\n" in result.stdout and "\nserve settings:\n" in result.stdout
    store_part = result.stdout.split("\nstore settings:\n")[1].split("\nserve settings:\n")[0]
    assert _options(store_part) == {flag_name(name) for name in STORE_SETTINGS}
    for name in ALL_SETTINGS:
        shown = _option_help(result.stdout, flag_name(name))
        assert shown.count("default") == 1, shown
        assert "None" not in shown, shown
    node_id = _option_help(result.stdout, "--node-id")
    assert "default a random id at each start" in node_id, node_id


# --- the store commands read the store settings only -------------------------------------


async def test_store_commands_read_only_the_store_settings(relay, tmp_path):
    """`port` and `max_devices` are serve settings: bad values of theirs in the environment,
    and file keys for serve, do not concern `purge` and `devices`; `config show` refuses them."""
    config = tmp_path / "relay.toml"
    config.write_text(f"data_dir = {_toml_string(relay.data_dir)}\nport = 1\nretention = 5.0\n")
    env = {**relay.extra_env, "RELAY_PORT": "eighty", "RELAY_MAX_DEVICES": "-1"}
    alice = await new_user(relay.url)

    purged = await arun_relay(["purge", "--config", str(config)], env)
    assert purged.code == 0, purged.stderr
    assert purged.stdout.startswith("purged ")
    listed = await arun_relay(["devices", alice.user, "--config", str(config)], env)
    assert listed.code == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == f"user {alice.user}: 1 active device"

    shown = await arun_relay(["config", "show", "--config", str(config)], env)
    assert shown.code == 2
    assert "port must be an integer, not 'eighty' (from env RELAY_PORT)" in shown.stderr

    not_theirs = await arun_relay(["purge", "--port", "1", "--config", str(config)], env)
    assert not_theirs.code == 2
    assert "unrecognized arguments: --port" in not_theirs.stderr

    config.write_text(f"data_dir = {_toml_string(relay.data_dir)}\nprot = 1\n")
    typo = await arun_relay(["purge", "--config", str(config)], env)
    assert typo.code == 2
    assert "unknown setting 'prot' (did you mean 'port'?)" in typo.stderr
    await alice.close()


def test_migrate_reads_the_database_url_from_a_config_file(tmp_path):
    config = tmp_path / "relay.toml"
    with empty_database() as url:
        # A serve setting in the file, and no redis_url: migrate needs PostgreSQL alone.
        config.write_text(f"database_url = {_toml_string(url)}\nport = 9000\n")
        before = run_relay(["migrate", "--check", "--config", str(config)])
        assert before.code == 1, before.stderr
        assert "schema version is 0" in before.stdout

        applied = run_relay(["migrate", "--config", str(config)])
        assert applied.code == 0, applied.stderr
        assert applied.stdout.startswith("up 0001_")

        after = run_relay(["migrate", "--check"], env={"RELAY_CONFIG": str(config)})
        assert after.code == 0, after.stderr
        assert "is the latest" in after.stdout

        down = run_relay(["migrate", "--to", "0", "--config", str(config)])
        assert down.code == 0, down.stderr
        assert down.stdout.splitlines()[-1] == "down 0001_initial"
        emptied = run_relay(["migrate", "--check", "--config", str(config)])
        assert emptied.code == 1

        no_such = run_relay(["migrate", "--to", "999", "--config", str(config)])
        assert no_such.code == 2
        assert no_such.stderr.startswith("relay: migrate --to: no schema version 999")


def test_migrate_names_a_missing_or_bad_database_url(tmp_path):
    missing = run_relay(["migrate"])
    assert missing.code == 2
    assert "migrate needs database_url" in missing.stderr
    config = tmp_path / "relay.toml"
    config.write_text('database_url = "mysql://db.example/relay"\n')
    bad = run_relay(["migrate", "--config", str(config)])
    assert bad.code == 2
    assert bad.stderr == (
        "relay: bad setting: database_url must be a postgresql:// or postgres:// URL "
        f"(from file {config}:database_url)\n"
    )
    flag = run_relay(["migrate", "--config", str(config), "--database-url", "postgresql://"])
    assert flag.code == 2
    assert "database_url names no host (from flag --database-url)" in flag.stderr


# --- relay docs --------------------------------------------------------------------------


def _topics(index: str) -> set[str]:
    return {line.split()[0] for line in index.splitlines() if line.startswith("  ")}


def test_docs_lists_and_prints_the_pages():
    pages = {path.stem: path for path in (REPO_ROOT / "docs").glob("*.md")}
    index = run_relay(["docs"])
    assert index.code == 0, index.stderr
    assert _topics(index.stdout) == {"readme", *pages}
    operations = run_relay(["docs", "operations"])
    assert operations.code == 0, operations.stderr
    assert operations.stdout == pages["operations"].read_text(encoding="utf-8")
    readme = run_relay(["docs", "README"])
    assert readme.stdout == (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    unknown = run_relay(["docs", "nowhere"])
    assert unknown.code == 2
    assert unknown.stderr.startswith("relay: no documentation page 'nowhere'; pages: readme, ")

    top = run_relay(["--help"])
    assert "relay docs" in top.stdout and "docs/operations.md" not in top.stdout


def test_a_built_wheel_carries_the_docs(tmp_path):
    """What a pip user gets: the pages inside the wheel, and `relay docs` reading them there."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            *(".git", ".venv*", "*.egg-info", "build", "dist", "__pycache__", ".*_cache"),
            *("tests", ".hypothesis", "relay-data", "test-artifacts", "loadtest-report"),
        ),
    )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    wheel_dir = str(tmp_path / "dist")
    built = subprocess.run(
        [*pip_wheel, "--no-deps", "--no-build-isolation", "--wheel-dir", wheel_dir, str(source)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("relay-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"relay/README.md", "relay/docs/operations.md"} <= names
        archive.extractall(installed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = str(installed)
    index = subprocess.run(
        [sys.executable, "-m", "relay", "docs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert index.returncode == 0, index.stderr
    assert f"({installed / 'relay' / 'docs' / 'operations.md'})" in index.stdout
