"""Settings: defaults < TOML file < environment < flags; unknown or mistyped settings are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver import config
from resolver.config import ConfigError, Settings, load

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "resolver.toml"
    path.write_text(text)
    return str(path)


def test_shipped_file_holds_exactly_the_defaults() -> None:
    assert load(str(ROOT / "conf" / "resolver.toml"), {}, {}) == Settings()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[log]\nlevel = "warning"\n[tcp]\nidle_timeout = 2.5\n[server]\nlisten_mode = "redirect"\n'
    )
    from_file = load(path, {}, {})
    assert (from_file.log_level, from_file.tcp_idle_timeout, from_file.listen_mode) == (
        "warning",
        2.5,
        "redirect",
    )
    env = {"RESOLVER_LOG_LEVEL": "debug", "RESOLVER_TCP_IDLE_TIMEOUT": "4", "RESOLVER_SOCKET": "/tmp/x.sock"}
    from_env = load(path, env, {})
    assert (from_env.log_level, from_env.tcp_idle_timeout, from_env.socket) == ("debug", 4.0, "/tmp/x.sock")
    from_flags = load(path, env, {"log_level": "info", "socket": None})
    assert (from_flags.log_level, from_flags.socket) == ("info", "/tmp/x.sock")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[tcp]\nidle_timeot = 3\n", "'idle_timeot' in section [tcp]"),
        ("[tpc]\nidle_timeout = 3\n", "unknown section [tpc]"),
        ('[upstream]\ntimeout = "fast"\n', "upstream_timeout must be a float"),
        ("[cache]\nenabled = 3\n", "cache_enabled must be a bool"),
        ('[server]\nlisten_mode = "nat"\n', "listen_mode must be one of direct, redirect"),
        ("[limits]\ninflight_total = -1\n", "limits_inflight_total must not be negative"),
        ("[tcp\n", "not valid TOML"),
        ("socket = 1\n", "unknown section [socket]"),
    ],
)
def test_bad_files_are_refused_naming_the_problem(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text), {}, {})
    assert named in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_bad_environment_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="RESOLVER_CACHE_SIZE"):
        load(None, {"RESOLVER_CACHE_SIZE": "lots"}, {})


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load(str(tmp_path / "nope.toml"), {}, {})


def test_booleans_from_text() -> None:
    assert config.coerce("cache_enabled", "off", "env") is False
    assert config.coerce("cache_enabled", "Yes", "env") is True
