"""Settings: read once from environment variables and an optional TOML file, validated at start.

Environment variables win over the file. Every setting has a TOML key: the variable's name in
lower case without its ``CLOUDFLARE_`` or ``ARCHIVER_`` prefix (``ARCHIVER_DATABASE_URL`` ->
``database_url``). Nothing is read at import time: callers build a :class:`Settings` and pass it on.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from archiver.errors import ConfigError

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
ACCOUNT_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

# Field name -> environment variable. The TOML key is the field name (account_ids: account_id).
ENV_NAMES: dict[str, str] = {
    "api_token": "CLOUDFLARE_API_TOKEN",
    "email": "CLOUDFLARE_EMAIL",
    "api_key": "CLOUDFLARE_API_KEY",
    "account_ids": "CLOUDFLARE_ACCOUNT_ID",
    "base_url": "CLOUDFLARE_BASE_URL",
    "database_url": "ARCHIVER_DATABASE_URL",
    "interval_seconds": "ARCHIVER_INTERVAL_SECONDS",
    "min_interval_seconds": "ARCHIVER_MIN_INTERVAL_SECONDS",
    "shutdown_grace_seconds": "ARCHIVER_SHUTDOWN_GRACE_SECONDS",
    "cycle_timeout_seconds": "ARCHIVER_CYCLE_TIMEOUT_SECONDS",
    "upstream_limit_requests": "ARCHIVER_UPSTREAM_LIMIT_REQUESTS",
    "upstream_limit_window_seconds": "ARCHIVER_UPSTREAM_LIMIT_WINDOW_SECONDS",
    "detail_policy": "ARCHIVER_DETAIL_POLICY",
    "detail_budget": "ARCHIVER_DETAIL_BUDGET",
    "detail_concurrency": "ARCHIVER_DETAIL_CONCURRENCY",
    "rate_limit": "ARCHIVER_RATE_LIMIT",
    "rate_budget": "ARCHIVER_RATE_BUDGET",
    "http_timeout_seconds": "ARCHIVER_HTTP_TIMEOUT_SECONDS",
    "max_retries": "ARCHIVER_MAX_RETRIES",
    "max_retry_wait_seconds": "ARCHIVER_MAX_RETRY_WAIT_SECONDS",
    "metrics_port": "ARCHIVER_METRICS_PORT",
    "metrics_host": "ARCHIVER_METRICS_HOST",
    "log_format": "ARCHIVER_LOG_FORMAT",
    "log_level": "ARCHIVER_LOG_LEVEL",
    "keep_url_tokens": "ARCHIVER_KEEP_URL_TOKENS",
    "allow_insecure_http": "ARCHIVER_ALLOW_INSECURE_HTTP",
    "price_browser_hour": "ARCHIVER_PRICE_BROWSER_HOUR",
    "included_browser_hours": "ARCHIVER_INCLUDED_BROWSER_HOURS",
    "price_concurrent_browser": "ARCHIVER_PRICE_CONCURRENT_BROWSER",
    "included_concurrent_browsers": "ARCHIVER_INCLUDED_CONCURRENT_BROWSERS",
    "idle_keepalive_seconds": "ARCHIVER_IDLE_KEEPALIVE_SECONDS",
}
TOML_ALIASES = {"account_id": "account_ids"}


@dataclass(frozen=True, slots=True)
class Credentials:
    """Either an API token or an email + global API key. The repr never shows the secret."""

    token: SecretStr | None = None
    email: str | None = None
    api_key: SecretStr | None = None

    def headers(self) -> dict[str, str]:
        """The HTTP headers that authenticate a request."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        assert self.email is not None and self.api_key is not None
        return {"X-Auth-Email": self.email, "X-Auth-Key": self.api_key.get_secret_value()}

    def secrets(self) -> list[str]:
        """The secret values, so that log filters and tests can look for them."""
        return [s.get_secret_value() for s in (self.token, self.api_key) if s is not None]


class Settings(BaseModel):
    """Every setting of the archiver, validated. Secrets are SecretStr: their repr is masked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_token: SecretStr | None = None
    email: str | None = None
    api_key: SecretStr | None = None
    account_ids: list[str] = Field(default_factory=list)
    base_url: str = DEFAULT_BASE_URL
    database_url: SecretStr = SecretStr("sqlite:///archive.db")
    interval_seconds: float = Field(30.0, gt=0)
    # The service may poll faster than interval_seconds, down to this, while the rate budget allows.
    min_interval_seconds: float | None = Field(None, gt=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    # The longest a poll cycle may run: past it, the cycle stops and what it owes stays owed.
    cycle_timeout_seconds: float = Field(300.0, gt=0)
    # Cloudflare's documented per-token limit, which rate_budget is a share of.
    upstream_limit_requests: int = Field(1200, gt=0)
    upstream_limit_window_seconds: float = Field(300.0, gt=0)
    detail_policy: Literal["auto", "changed", "vanished"] = "auto"
    detail_budget: int = Field(100, ge=0)
    detail_concurrency: int = Field(4, ge=1, le=64)
    rate_limit: float = Field(3.0, gt=0)
    rate_budget: float = Field(0.25, gt=0, le=1)
    http_timeout_seconds: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    max_retry_wait_seconds: float = Field(60.0, gt=0)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    keep_url_tokens: bool = False
    allow_insecure_http: bool = False
    # Cloudflare's Browser Rendering pricing for Workers Paid (late 2026), for `report usage`.
    price_browser_hour: float = Field(0.09, ge=0)
    included_browser_hours: float = Field(10.0, ge=0)
    price_concurrent_browser: float = Field(2.0, ge=0)
    included_concurrent_browsers: float = Field(10.0, ge=0)
    # A browser closes as idle after its keep-alive: 60 s unless the client asked for more (up to 10 minutes).
    idle_keepalive_seconds: float = Field(60.0, ge=0, le=600)

    @field_validator("account_ids", mode="before")
    @classmethod
    def _split_accounts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator("account_ids")
    @classmethod
    def _check_accounts(cls, value: list[str]) -> list[str]:
        normalized = [v.strip().lower() for v in value]
        for account in normalized:
            if not ACCOUNT_ID_PATTERN.fullmatch(account):
                raise ValueError(f"{account!r} is not a Cloudflare account id (32 hex digits)")
        return list(dict.fromkeys(normalized))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("email", "metrics_port", "min_interval_seconds", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_base_url(self) -> Settings:
        try:
            parts = urlsplit(self.base_url)
            hostname, port = parts.hostname, parts.port
        except ValueError:  # a malformed host, or a port that is not a number in 0..65535
            raise ValueError(f"base_url: {self.base_url!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise ValueError(f"base_url: {self.base_url!r} is not an http(s) URL")
        if port == 0:
            raise ValueError(f"base_url: {self.base_url!r} is not a valid URL (port 0)")
        if parts.scheme == "http" and not self.allow_insecure_http and not _is_loopback(hostname):
            raise ValueError(
                "base_url: plain http is refused for a non-loopback host "
                "(use https, or set ARCHIVER_ALLOW_INSECURE_HTTP=true)"
            )
        return self

    def credentials(self) -> Credentials:
        """The configured credentials, or a ConfigError naming what to set."""
        if self.api_token is not None and self.api_token.get_secret_value():
            return Credentials(token=self.api_token)
        if self.email and self.api_key is not None and self.api_key.get_secret_value():
            return Credentials(email=self.email, api_key=self.api_key)
        raise ConfigError("CLOUDFLARE_API_TOKEN is not set (or set CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY)")

    def accounts(self) -> list[str]:
        """The configured account ids, or a ConfigError if there are none."""
        if not self.account_ids:
            raise ConfigError("CLOUDFLARE_ACCOUNT_ID is not set (one or more account ids, comma-separated)")
        return list(self.account_ids)

    @property
    def interval_floor(self) -> float:
        """The shortest interval the service may poll at: the setting, else a third of the interval."""
        floor = self.min_interval_seconds if self.min_interval_seconds is not None else self.interval_seconds / 3
        return min(floor, self.interval_seconds)

    @property
    def budget_requests(self) -> int:
        """Requests per token that the rate budget allows in any upstream window."""
        return max(1, math.floor(self.upstream_limit_requests * self.rate_budget))

    def secret_values(self) -> list[str]:
        """Every secret in these settings, for log redaction."""
        values = [s.get_secret_value() for s in (self.api_token, self.api_key) if s is not None]
        return list(dict.fromkeys(v for v in values + _url_passwords(self.database_url.get_secret_value()) if v))


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the TOML file (if any) overlaid by environment variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = _read_toml(config_file) if config_file is not None else {}
    for field, env_name in ENV_NAMES.items():
        # An empty variable counts as unset, as in most shells' ${VAR:-default}.
        if environ.get(env_name):
            values[field] = environ[env_name]
    return settings_from(values)


def settings_from(values: Mapping[str, Any]) -> Settings:
    """Validate a mapping of field names to values, turning errors into one clear ConfigError."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        field = TOML_ALIASES.get(key, key)
        if field not in ENV_NAMES:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        values[field] = value
    _check_private(path, mode, values)
    return values


def _check_private(path: Path, mode: int, values: Mapping[str, Any]) -> None:
    """Refuse, as ssh refuses a private key others may use, a config file that others may
    change (it says where the credentials go: base_url), or read when it holds a secret."""
    if os.name != "posix":
        return
    if mode & 0o022:
        raise ConfigError(f"config file {path} may be changed by others (mode {mode:04o}): chmod go-w {path}")
    secret = next((name for name in SECRET_KEYS if _holds_secret(name, values.get(name))), None)
    if secret is not None and mode & 0o004:
        raise ConfigError(f"config file {path} holds {secret} and may be read by others (mode {mode:04o}): chmod o-r {path}")


# Keys of the config file whose values are secrets (database_url only when it holds a password).
SECRET_KEYS = ("api_token", "api_key", "database_url")


def _holds_secret(name: str, value: Any) -> bool:
    if not value:
        return False
    return bool(_url_passwords(str(value))) if name == "database_url" else True


def _describe(exc: ValidationError) -> str:
    """The first problem, named by its environment variable, without echoing secret values."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if field not in ENV_NAMES:
        # A model-level check: its message starts with the field name.
        field, _, message = str(error["msg"]).removeprefix("Value error, ").partition(": ")
        return f"{ENV_NAMES.get(field, field)}: {message}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{ENV_NAMES[field]}: {message}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_passwords(url: str) -> list[str]:
    # Both spellings: the URL carries it percent-encoded, drivers may echo it decoded.
    try:
        encoded = urlsplit(url).password
    except ValueError:
        return []
    return [encoded, unquote(encoded)] if encoded else []
