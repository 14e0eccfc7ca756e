"""Where settings come from: flags, `RELAY_*` environment variables and a TOML file.

Every setting `some_name` is a flag `--some-name`, an environment variable
`RELAY_SOME_NAME` and a key `some_name` of the optional TOML file named by
`--config` (or `RELAY_CONFIG`). A flag wins over the environment, the
environment over the file, the file over the default. Every error names the
setting and where its value came from, so the operator knows what to fix.
`relay serve` and `relay config show` read every setting; the store commands read only
theirs (`config.STORE_SETTINGS`, `config.MIGRATE_SETTINGS`) and leave the rest at their
defaults, though a file's other keys must still be known settings of the right type.
Nothing here reads the environment at import time.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from relay.config import (
    MASK,
    MIGRATE_SETTINGS,
    SECRET_SETTINGS,
    SETTING_HELP,
    STORE_SETTINGS,
    UNSET_MEANING,
    URL_SETTINGS,
    ConfigError,
    Settings,
    check_database_url,
)

# --- where a value came from ----------------------------------------------------------


class Origin(Enum):
    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Source:
    """Where one setting's value came from: `flag --port`, `env RELAY_PORT`, `file x.toml:port`."""

    origin: Origin
    where: str = ""

    def __str__(self) -> str:
        return self.origin.value if not self.where else f"{self.origin.value} {self.where}"


DEFAULT_SOURCE = Source(Origin.DEFAULT)


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """The effective settings, where each one came from, and the file read (if any)."""

    settings: Settings
    sources: Mapping[str, Source]
    config_file: Path | None


# --- the type of each setting, and how text and TOML values become it ------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str  # for messages: "an integer", "a number", ...
    from_text: Callable[[str], Any]
    from_toml: Callable[[object], Any]  # raises TypeError on a value of the wrong TOML type


def _int_text(raw: str) -> int:
    return int(raw.strip())


def _float_text(raw: str) -> float:
    return float(raw.strip())


def _bool_text(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _worker_count_text(raw: str) -> int | str:
    """A number of workers, or a word ("auto") that the settings check."""
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _toml_of(*types: type) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        if isinstance(value, bool) and bool not in types:
            raise TypeError
        if not isinstance(value, types):
            raise TypeError
        return value

    return check


def _toml_float(value: float) -> float:
    """A TOML number as a float; an integer too large for one is infinite (then refused)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


_KINDS: dict[str, _Kind] = {
    "int": _Kind("an integer", _int_text, _toml_of(int)),
    "float": _Kind("a number", _float_text, lambda v: _toml_float(_toml_of(int, float)(v))),
    "bool": _Kind("a boolean", _bool_text, _toml_of(bool)),
    "str": _Kind("a string", str, _toml_of(str)),
    "str | None": _Kind("a string", str, _toml_of(str)),
    "Path": _Kind("a path (string)", Path, lambda v: Path(_toml_of(str)(v))),
    "WorkerCount": _Kind('an integer or "auto"', _worker_count_text, _toml_of(int, str)),
}
_KINDS |= {f"{name} | None": kind for name, kind in list(_KINDS.items()) if "None" not in name}
_FIELDS = {f.name: f for f in fields(Settings)}
for _f in _FIELDS.values():
    if str(_f.type) not in _KINDS:
        raise TypeError(f"setting {_f.name} has a type config.py cannot read: {_f.type}")


def _kind(name: str) -> _Kind:
    return _KINDS[str(_FIELDS[name].type)]


_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _toml_type(value: object) -> str:
    for t, name in _TOML_TYPES.items():
        if isinstance(value, t):
            return name
    return "a date or time"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return "RELAY_" + name.upper()


# --- building the settings ---------------------------------------------------------------


def add_settings_arguments(
    parser: argparse.ArgumentParser, names: Collection[str] | None = None
) -> None:
    """`--config` and one flag per setting: every setting (`serve`, `config show`), or only
    those in `names` (the store commands). Flags keep their raw text so that a bad value gets
    the same message whatever its source."""
    ignored = "" if names is None else "; its other settings are checked but not used"
    parser.add_argument(
        "--config",
        dest="config",
        default=None,
        metavar="FILE",
        help=f"TOML file of settings, keys as below without the dashes{ignored} (env RELAY_CONFIG)",
    )
    store = parser.add_argument_group("store settings")
    serve = parser.add_argument_group("serve settings")  # argparse omits it when empty
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        meaning = SETTING_HELP.get(f.name, f.name.replace("_", " "))
        default = UNSET_MEANING.get(f.name, "unset") if f.default is None else f.default
        if isinstance(f.default, bool):
            default = "on" if f.default else "off"
        help_text = f"{meaning} (env {env_name(f.name)}; default {default})"
        # A store command's settings are all about the store (`relay purge`: what it keeps).
        group = store if names is not None or f.name in STORE_SETTINGS else serve
        if str(f.type) == "bool":  # a switch: --migrate / --no-migrate
            group.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        group.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=help_text,
        )


@dataclass(frozen=True, slots=True)
class _Given:
    """The settings given by a file, the environment or a flag, typed but not yet validated."""

    values: dict[str, Any]
    sources: dict[str, Source]
    config_file: Path | None


def _gather(args: argparse.Namespace, environ: Mapping[str, str], names: Collection[str]) -> _Given:
    """Flags over RELAY_* variables over the TOML file, for the settings in `names`; the file's
    other keys are still checked for their names and types."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    config_file = _config_path(args, environ)
    if config_file is not None:
        for name, value in _read_toml(config_file).items():
            if name in names:
                values[name] = value
                sources[name] = Source(Origin.FILE, f"{config_file}:{name}")
    for name in names:
        raw = environ.get(env_name(name))
        if raw:  # an empty variable counts as unset
            values[name] = _from_text(name, raw, Source(Origin.ENV, env_name(name)))
            sources[name] = Source(Origin.ENV, env_name(name))
        given = getattr(args, name, None)
        if given is not None:
            flag = Source(Origin.FLAG, flag_name(name))
            values[name] = given if isinstance(given, bool) else _from_text(name, given, flag)
            sources[name] = Source(Origin.FLAG, flag_name(name))
    return _Given(values, sources, config_file)


def load_settings(
    args: argparse.Namespace, environ: Mapping[str, str], names: Collection[str] | None = None
) -> LoadedSettings:
    """Flags, then RELAY_* variables, then the TOML file, then the defaults; validated. With
    `names`, only those settings are read; the others keep their defaults."""
    given = _gather(args, environ, _FIELDS.keys() if names is None else names)
    values, sources = given.values, given.sources
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].upper()
    try:
        settings = Settings(**values)
    except ConfigError as exc:
        source = sources.get(exc.setting or "", DEFAULT_SOURCE)
        where = f"from {source}"
        if exc.related:
            where = ", ".join(
                f"{name} from {sources.get(name, DEFAULT_SOURCE)}"
                for name in (exc.setting or "", *exc.related)
            )
        raise ConfigError(f"{exc} ({where})", setting=exc.setting) from None
    return LoadedSettings(
        settings=settings,
        sources={name: sources.get(name, DEFAULT_SOURCE) for name in _FIELDS},
        config_file=given.config_file,
    )


def load_database_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The PostgreSQL URL alone, for `relay migrate` (which needs no Redis URL); checked."""
    given = _gather(args, environ, MIGRATE_SETTINGS)
    url = given.values.get("database_url")
    if url is None:
        return None
    try:
        check_database_url(url)
    except ConfigError as exc:
        source = given.sources["database_url"]
        raise ConfigError(f"{exc} (from {source})", setting="database_url") from None
    return str(url)


def given_flags(args: argparse.Namespace, leave_out: Collection[str] = ()) -> list[str]:
    """The settings flags of a parsed command line (and `--config`) as `--name=value`, in a
    form that parses back to the same values whatever they hold, but for the settings in
    `leave_out`: what the workers of `relay serve --workers N` are started with."""
    flags = [] if getattr(args, "config", None) is None else [f"--config={args.config}"]
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is None or name in leave_out:
            continue
        if isinstance(value, bool):
            flags.append(flag_name(name) if value else "--no-" + flag_name(name)[2:])
        else:
            flags.append(f"{flag_name(name)}={value}")
    return flags


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(args, environ).settings


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="relay serve")
    add_settings_arguments(parser)
    return settings_from(parser.parse_args(list(argv)), os.environ if environ is None else environ)


def _config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    given = getattr(args, "config", None) or environ.get("RELAY_CONFIG") or None
    return None if given is None else Path(given)


def _from_text(name: str, raw: str, source: Source) -> Any:
    kind = _kind(name)
    try:
        return kind.from_text(raw)
    except ValueError:
        shown = MASK if name in SECRET_SETTINGS | URL_SETTINGS else repr(raw)
        raise ConfigError(
            f"{name} must be {kind.name}, not {shown} (from {source})", setting=name
        ) from None


MAX_CONFIG_BYTES = 1024 * 1024


def _read_toml(path: Path) -> dict[str, Any]:
    """The settings of a TOML file, each checked for its name and type."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path}: not valid TOML: nested too deeply") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {path}: unknown setting {key!r}{hint}", setting=key)
        kind = _kind(key)
        try:
            values[key] = kind.from_toml(value)
        except TypeError:
            raise ConfigError(
                f"{key} must be {kind.name}, not {_toml_type(value)} (from file {path}:{key})",
                setting=key,
            ) from None
    return values
