"""Daemon settings: defaults, then `conf/resolver.toml` (or --config), then RESOLVER_* environment
variables, then command-line flags.

Rules: the TOML file has sections whose keys map to `Settings` fields as `<section>_<key>` (the `[server]`
section maps to plain names); an unknown section or key, or a value of the wrong type, is a
`ConfigError` that names it. Settings are frozen; SIGHUP builds a new object and swaps it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "RESOLVER_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key and problem."""


@dataclass(frozen=True, slots=True)
class Settings:
    socket: str = "/run/resolver/resolver.sock"
    state_dir: str = "/var/lib/resolver"
    host_resolv_conf: str = "/etc/resolv.conf"
    listen_address: str = "127.0.0.11"
    listen_mode: Literal["direct", "redirect"] = "direct"
    watch_interval: float = 1.0
    drain_timeout: float = 2.0
    join_timeout: float = 5.0
    restore_resolv_conf_on_exit: bool = False
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"
    tcp_idle_timeout: float = 5.0
    tcp_max_connections: int = 64
    tcp_max_pipelined: int = 16
    tcp_max_message: int = 65535
    upstream_timeout: float = 1.0
    upstream_probe_interval: float = 2.0
    upstream_max_attempts: int = 3
    limits_inflight_total: int = 1024
    limits_inflight_per_sandbox: int = 256
    cache_enabled: bool = True
    cache_size: int = 10000
    cache_max_ttl: int = 3600
    cache_min_negative_ttl: int = 0
    registry_backend: Literal["memory", "etcd"] = "memory"
    registry_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    registry_prefix: str = "/resolver/"
    registry_host_id: str = ""
    registry_lease_ttl: int = 10
    registry_timeout: float = 2.0
    registry_tls_ca: str = ""
    registry_tls_cert: str = ""
    registry_tls_key: str = ""


SECTIONS = ("server", "log", "tcp", "upstream", "limits", "cache", "registry")
_FIELDS = {f.name: f for f in fields(Settings)}
_CHOICES = {
    "listen_mode": ("direct", "redirect"),
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "registry_backend": ("memory", "etcd"),
}


def _field_for(section: str, key: str) -> str:
    return key if section == "server" else f"{section}_{key}"


def coerce(name: str, value: Any, origin: str, strict: bool = False) -> Any:
    """Convert `value` to the type of field `name`, or raise ConfigError. `strict` (TOML, which has
    types): the value must already have the field's type (an integer is also a valid float);
    otherwise (environment, flags) text is converted."""
    if name not in _FIELDS:
        raise ConfigError(f"{origin}: unknown setting {name!r}")
    kind = type(getattr(Settings(), name))
    try:
        result = _typed(kind, value) if strict else _converted(kind, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {name} must be a {kind.__name__}, not {value!r}") from None
    if name in _CHOICES:
        result = result.lower()
        if result not in _CHOICES[name]:
            raise ConfigError(f"{origin}: {name} must be one of {', '.join(_CHOICES[name])}, not {value!r}")
    if kind in (int, float) and result < 0:
        raise ConfigError(f"{origin}: {name} must not be negative")
    return result


def _typed(kind: type, value: Any) -> Any:
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError
        return tuple(value)
    if isinstance(value, bool) != (kind is bool):
        raise TypeError
    if kind is float and isinstance(value, int | float):
        return float(value)
    if not isinstance(value, kind):
        raise TypeError
    return value


def _converted(kind: type, value: Any) -> Any:
    if kind is bool:
        return _to_bool(value)
    if isinstance(value, bool) or (isinstance(value, float) and kind is int):
        raise TypeError
    if kind in (int, float, str):
        return kind(value)
    if kind is tuple and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    raise TypeError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError


def from_toml(text: str, origin: str) -> dict[str, Any]:
    """Settings overrides from TOML text; unknown sections and keys are errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {section} must be a [{section}] table, not a value")
        for key, value in table.items():
            name = _field_for(section, key)
            if name not in _FIELDS:
                raise ConfigError(f"{origin}: unknown key {key!r} in section [{section}]")
            values[name] = coerce(name, value, f"{origin} [{section}] {key}", strict=True)
    return values


def from_env(environ: dict[str, str]) -> dict[str, Any]:
    """Overrides from RESOLVER_<FIELD> variables (e.g. RESOLVER_TCP_IDLE_TIMEOUT)."""
    values: dict[str, Any] = {}
    for var, value in environ.items():
        if var.startswith(ENV_PREFIX):
            name = var[len(ENV_PREFIX) :].lower()
            if name in _FIELDS:
                values[name] = coerce(name, value, f"environment {var}")
    return values


def load(config_file: str | None, environ: dict[str, str], flags: dict[str, Any]) -> Settings:
    """Defaults < config file < environment < flags (flags that are None are not given)."""
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        values.update(from_toml(text, str(path)))
    values.update(from_env(environ))
    values.update(
        {k: coerce(k, v, f"flag --{k.replace('_', '-')}") for k, v in flags.items() if v is not None}
    )
    return replace(Settings(), **values)
