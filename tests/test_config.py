"""Settings: environment variables, the TOML file, validation messages and secret hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from archiver.config import (
    DEFAULT_BASE_URL,
    ENV_NAMES,
    Credentials,
    Settings,
    load_settings,
    settings_from,
)
from archiver.errors import ConfigError

ACCOUNT_A = "0123456789abcdef0123456789abcdef"
ACCOUNT_B = "fedcba9876543210fedcba9876543210"
TOKEN = "tok-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"
API_KEY = "key-144c9defac04969c7bfad8efaa8ea194"
DB_PASSWORD = "pw-Zq8xV2mK0rT"
DB_URL = f"postgresql+psycopg://archiver:{DB_PASSWORD}@db.internal:5432/archive"


def write_toml(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "archiver.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)  # a file holding a secret must be private
    return path


# --- environment variables --------------------------------------------------------------------

ENV_CASES = [
    ("CLOUDFLARE_API_TOKEN", TOKEN, "api_token", TOKEN),
    ("CLOUDFLARE_EMAIL", "ops@example.com", "email", "ops@example.com"),
    ("CLOUDFLARE_API_KEY", API_KEY, "api_key", API_KEY),
    ("CLOUDFLARE_ACCOUNT_ID", ACCOUNT_A, "account_ids", [ACCOUNT_A]),
    ("CLOUDFLARE_BASE_URL", "https://proxy.example/client/v4", "base_url", "https://proxy.example/client/v4"),
    ("ARCHIVER_DATABASE_URL", DB_URL, "database_url", DB_URL),
    ("ARCHIVER_INTERVAL_SECONDS", "12.5", "interval_seconds", 12.5),
    ("ARCHIVER_DETAIL_POLICY", "vanished", "detail_policy", "vanished"),
    ("ARCHIVER_DETAIL_BUDGET", "7", "detail_budget", 7),
    ("ARCHIVER_DETAIL_CONCURRENCY", "9", "detail_concurrency", 9),
    ("ARCHIVER_RATE_LIMIT", "1.5", "rate_limit", 1.5),
    ("ARCHIVER_RATE_BUDGET", "0.5", "rate_budget", 0.5),
    ("ARCHIVER_HTTP_TIMEOUT_SECONDS", "3", "http_timeout_seconds", 3.0),
    ("ARCHIVER_MAX_RETRIES", "0", "max_retries", 0),
    ("ARCHIVER_MAX_RETRY_WAIT_SECONDS", "2.5", "max_retry_wait_seconds", 2.5),
    ("ARCHIVER_METRICS_PORT", "9100", "metrics_port", 9100),
    ("ARCHIVER_METRICS_PORT", "", "metrics_port", None),
    ("ARCHIVER_METRICS_HOST", "0.0.0.0", "metrics_host", "0.0.0.0"),
    ("ARCHIVER_LOG_FORMAT", "json", "log_format", "json"),
    ("ARCHIVER_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("ARCHIVER_KEEP_URL_TOKENS", "true", "keep_url_tokens", True),
    ("ARCHIVER_KEEP_URL_TOKENS", "0", "keep_url_tokens", False),
    ("ARCHIVER_ALLOW_INSECURE_HTTP", "yes", "allow_insecure_http", True),
    ("ARCHIVER_MIN_INTERVAL_SECONDS", "7.5", "min_interval_seconds", 7.5),
    ("ARCHIVER_SHUTDOWN_GRACE_SECONDS", "0", "shutdown_grace_seconds", 0.0),
    ("ARCHIVER_CYCLE_TIMEOUT_SECONDS", "120", "cycle_timeout_seconds", 120.0),
    ("ARCHIVER_UPSTREAM_LIMIT_REQUESTS", "600", "upstream_limit_requests", 600),
    ("ARCHIVER_UPSTREAM_LIMIT_WINDOW_SECONDS", "60", "upstream_limit_window_seconds", 60.0),
    ("ARCHIVER_PRICE_BROWSER_HOUR", "0.1", "price_browser_hour", 0.1),
    ("ARCHIVER_INCLUDED_BROWSER_HOURS", "0", "included_browser_hours", 0.0),
    ("ARCHIVER_PRICE_CONCURRENT_BROWSER", "2.5", "price_concurrent_browser", 2.5),
    ("ARCHIVER_INCLUDED_CONCURRENT_BROWSERS", "3", "included_concurrent_browsers", 3.0),
    ("ARCHIVER_IDLE_KEEPALIVE_SECONDS", "600", "idle_keepalive_seconds", 600.0),
]


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize(
    ("env_name", "raw", "field", "expected"),
    ENV_CASES,
    ids=[f"{env}={raw or 'empty'}" for env, raw, _, _ in ENV_CASES],
)
def test_each_environment_variable_sets_its_field(env_name: str, raw: str, field: str, expected: object) -> None:
    assert ENV_NAMES[field] == env_name
    settings = load_settings(None, {env_name: raw})
    assert _plain(getattr(settings, field)) == expected


def test_every_field_has_an_environment_variable_and_vice_versa() -> None:
    assert set(ENV_NAMES) == set(Settings.model_fields)
    assert len(set(ENV_NAMES.values())) == len(ENV_NAMES)
    assert {env for env, *_ in ENV_CASES} == set(ENV_NAMES.values())


def test_unrelated_environment_is_ignored_and_defaults_apply() -> None:
    settings = load_settings(None, {"PATH": "/usr/bin", "ARCHIVER_UNKNOWN": "x", "CLOUDFLARE_ZONE_ID": "y"})
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.database_url.get_secret_value() == "sqlite:///archive.db"
    assert settings.interval_seconds == 30
    assert settings.detail_policy == "auto"
    assert settings.detail_budget == 100
    assert settings.rate_limit == 3
    assert settings.rate_budget == 0.25
    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"
    assert settings.log_format == "text"
    assert settings.keep_url_tokens is False
    assert settings.account_ids == []
    assert (settings.price_browser_hour, settings.included_browser_hours) == (0.09, 10)
    assert (settings.price_concurrent_browser, settings.included_concurrent_browsers) == (2.0, 10)
    assert settings.idle_keepalive_seconds == 60


def test_process_environment_is_read_when_none_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for env_name in ENV_NAMES.values():
        monkeypatch.delenv(env_name, raising=False)
    monkeypatch.setenv("ARCHIVER_DETAIL_BUDGET", "42")
    assert load_settings().detail_budget == 42


# --- account ids --------------------------------------------------------------------------------

ACCOUNT_CASES = [
    (ACCOUNT_A, [ACCOUNT_A]),
    (f"{ACCOUNT_A},{ACCOUNT_B}", [ACCOUNT_A, ACCOUNT_B]),
    (f" {ACCOUNT_A} , {ACCOUNT_B} ,", [ACCOUNT_A, ACCOUNT_B]),
    (f"{ACCOUNT_A.upper()},{ACCOUNT_A}", [ACCOUNT_A]),
    (f"{ACCOUNT_B},{ACCOUNT_A},{ACCOUNT_B.upper()}", [ACCOUNT_B, ACCOUNT_A]),
    (",,", []),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    ACCOUNT_CASES,
    ids=["one", "two", "spaces-and-trailing-comma", "upper-case-duplicate", "order-kept", "only-commas"],
)
def test_account_ids_are_split_lowered_and_deduplicated(raw: str, expected: list[str]) -> None:
    assert load_settings(None, {"CLOUDFLARE_ACCOUNT_ID": raw}).account_ids == expected


def test_accounts_returns_a_copy_of_the_configured_ids() -> None:
    settings = load_settings(None, {"CLOUDFLARE_ACCOUNT_ID": f"{ACCOUNT_A},{ACCOUNT_B}"})
    accounts = settings.accounts()
    assert accounts == [ACCOUNT_A, ACCOUNT_B]
    accounts.append("x")
    assert settings.accounts() == [ACCOUNT_A, ACCOUNT_B]


def test_accounts_without_any_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^CLOUDFLARE_ACCOUNT_ID is not set"):
        load_settings(None, {}).accounts()


# --- the TOML file --------------------------------------------------------------------------------


def test_toml_keys_are_field_names(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f"""
api_token = "{TOKEN}"
account_ids = ["{ACCOUNT_A}"]
database_url = "{DB_URL}"
interval_seconds = 5
detail_policy = "vanished"
metrics_port = 9200
keep_url_tokens = true
log_level = "warning"
""",
    )
    settings = load_settings(path, {})
    assert settings.api_token is not None and settings.api_token.get_secret_value() == TOKEN
    assert settings.account_ids == [ACCOUNT_A]
    assert settings.database_url.get_secret_value() == DB_URL
    assert settings.interval_seconds == 5
    assert settings.detail_policy == "vanished"
    assert settings.metrics_port == 9200
    assert settings.keep_url_tokens is True
    assert settings.log_level == "WARNING"


@pytest.mark.parametrize(
    "line",
    [
        f'account_id = ["{ACCOUNT_A.upper()}", "{ACCOUNT_B}", "{ACCOUNT_A}"]',
        f'account_id = "{ACCOUNT_A.upper()},{ACCOUNT_B}"',
    ],
    ids=["alias-list", "alias-comma-string"],
)
def test_toml_account_id_alias(tmp_path: Path, line: str) -> None:
    settings = load_settings(write_toml(tmp_path, line + "\n"), {})
    assert settings.account_ids == [ACCOUNT_A, ACCOUNT_B]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f"""
account_id = ["{ACCOUNT_A}"]
detail_budget = 10
rate_limit = 2.0
log_format = "json"
""",
    )
    settings = load_settings(path, {"CLOUDFLARE_ACCOUNT_ID": ACCOUNT_B, "ARCHIVER_DETAIL_BUDGET": "11"})
    assert settings.account_ids == [ACCOUNT_B]  # env wins, no merge of lists
    assert settings.detail_budget == 11
    # What the environment does not mention comes from the file.
    assert settings.rate_limit == 2.0
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("api_tokn = 'x'\n", "unknown key 'api_tokn'"),
        ("CLOUDFLARE_API_TOKEN = 'x'\n", "unknown key 'CLOUDFLARE_API_TOKEN'"),
        ("accounts = []\n", "unknown key 'accounts'"),
    ],
    ids=["typo", "env-name-as-key", "near-alias"],
)
def test_unknown_toml_key_is_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(path, {})
    assert str(path) in str(info.value)


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "interval_seconds = = 3\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(path, {})


def test_invalid_value_in_file_is_named_by_its_environment_variable(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'detail_policy = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"^ARCHIVER_DETAIL_POLICY: "):
        load_settings(path, {})


# --- invalid values --------------------------------------------------------------------------------

INVALID_CASES = [
    ("CLOUDFLARE_ACCOUNT_ID", "not-an-account"),
    ("CLOUDFLARE_ACCOUNT_ID", f"{ACCOUNT_A},{ACCOUNT_A[:-1]}"),
    ("CLOUDFLARE_ACCOUNT_ID", "g" * 32),
    ("ARCHIVER_INTERVAL_SECONDS", "0"),
    ("ARCHIVER_INTERVAL_SECONDS", "soon"),
    ("ARCHIVER_CYCLE_TIMEOUT_SECONDS", "0"),
    ("ARCHIVER_DETAIL_POLICY", "always"),
    ("ARCHIVER_DETAIL_BUDGET", "-1"),
    ("ARCHIVER_DETAIL_BUDGET", "1.5"),
    ("ARCHIVER_DETAIL_CONCURRENCY", "0"),
    ("ARCHIVER_DETAIL_CONCURRENCY", "65"),
    ("ARCHIVER_RATE_LIMIT", "0"),
    ("ARCHIVER_RATE_LIMIT", "nan"),
    ("ARCHIVER_RATE_BUDGET", "1.5"),
    ("ARCHIVER_RATE_BUDGET", "0"),
    ("ARCHIVER_HTTP_TIMEOUT_SECONDS", "-3"),
    ("ARCHIVER_MAX_RETRIES", "21"),
    ("ARCHIVER_MAX_RETRY_WAIT_SECONDS", "0"),
    ("ARCHIVER_METRICS_PORT", "0"),
    ("ARCHIVER_METRICS_PORT", "70000"),
    ("ARCHIVER_LOG_FORMAT", "xml"),
    ("ARCHIVER_LOG_LEVEL", "chatty"),
    ("ARCHIVER_KEEP_URL_TOKENS", "maybe"),
    ("ARCHIVER_ALLOW_INSECURE_HTTP", "perhaps"),
    ("ARCHIVER_PRICE_BROWSER_HOUR", "-0.09"),
    ("ARCHIVER_INCLUDED_BROWSER_HOURS", "nan"),
    ("ARCHIVER_PRICE_CONCURRENT_BROWSER", "two"),
    ("ARCHIVER_INCLUDED_CONCURRENT_BROWSERS", "-1"),
    ("ARCHIVER_IDLE_KEEPALIVE_SECONDS", "601"),
    ("CLOUDFLARE_BASE_URL", "ftp://api.example/"),
    ("CLOUDFLARE_BASE_URL", "https://"),
    ("CLOUDFLARE_BASE_URL", "api.cloudflare.com/client/v4"),
    ("CLOUDFLARE_BASE_URL", "http://api.cloudflare.com/client/v4"),
    ("CLOUDFLARE_BASE_URL", "http://10.1.2.3:8787"),
]
SECRET_ENV = {
    "CLOUDFLARE_API_TOKEN": TOKEN,
    "CLOUDFLARE_EMAIL": "ops@example.com",
    "CLOUDFLARE_API_KEY": API_KEY,
    "ARCHIVER_DATABASE_URL": DB_URL,
}


@pytest.mark.parametrize(
    ("env_name", "raw"),
    INVALID_CASES,
    ids=[f"{env}={raw or 'empty'}" for env, raw in INVALID_CASES],
)
def test_invalid_value_names_its_variable_and_hides_secrets(env_name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**SECRET_ENV, env_name: raw})
    message = str(info.value)
    assert message.startswith(f"{env_name}: "), message
    assert len(message) > len(env_name) + 2
    for secret in (TOKEN, API_KEY, DB_PASSWORD):
        assert secret not in message


@pytest.mark.parametrize(
    ("line", "env_name", "value"),
    [
        ("api_token = 918273645546372819", "CLOUDFLARE_API_TOKEN", "918273645546372819"),
        ("api_key = 918273645546372819", "CLOUDFLARE_API_KEY", "918273645546372819"),
        ("database_url = 918273645546372819", "ARCHIVER_DATABASE_URL", "918273645546372819"),
        ('api_token = ["tok-in-a-list-7c1f"]', "CLOUDFLARE_API_TOKEN", "tok-in-a-list-7c1f"),
    ],
    ids=["token-number", "key-number", "database-url-number", "token-list"],
)
def test_wrongly_typed_secret_in_file_is_not_echoed(tmp_path: Path, line: str, env_name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_toml(tmp_path, line + "\n"), {})
    assert str(info.value).startswith(f"{env_name}: ")
    assert value not in str(info.value)


def test_malformed_base_url_is_named_by_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CLOUDFLARE_BASE_URL: "):
        load_settings(None, {"CLOUDFLARE_BASE_URL": "https://[::1/client/v4"})


def test_settings_are_frozen_and_refuse_unknown_fields() -> None:
    settings = settings_from({})
    with pytest.raises(ValueError, match="frozen"):
        settings.detail_budget = 5  # type: ignore[misc]
    with pytest.raises(ConfigError):
        settings_from({"detail_budgett": 5})


# --- base URL and plain http --------------------------------------------------------------------------

BASE_URL_CASES = [
    ("https://api.cloudflare.com/client/v4", False, True),
    ("http://127.0.0.1:8787/client/v4", False, True),
    ("http://127.9.9.9:8787", False, True),
    ("http://localhost:8787/client/v4", False, True),
    ("http://[::1]:8787/client/v4", False, True),
    ("http://api.cloudflare.com/client/v4", False, False),
    ("http://192.168.1.10:8787", False, False),
    ("http://localhost.example.com", False, False),
    ("http://[::2]:8787", False, False),
    ("http://api.cloudflare.com/client/v4", True, True),
    ("http://192.168.1.10:8787", True, True),
]


@pytest.mark.parametrize(
    ("base_url", "allow_insecure", "accepted"),
    BASE_URL_CASES,
    ids=[
        "https",
        "http-127.0.0.1",
        "http-127-other-loopback",
        "http-localhost",
        "http-ipv6-loopback",
        "http-public-refused",
        "http-private-refused",
        "http-localhost-lookalike-refused",
        "http-ipv6-non-loopback-refused",
        "http-public-allowed-insecure",
        "http-private-allowed-insecure",
    ],
)
def test_plain_http_only_for_loopback_unless_allowed(base_url: str, allow_insecure: bool, accepted: bool) -> None:
    env = {"CLOUDFLARE_BASE_URL": base_url, "ARCHIVER_ALLOW_INSECURE_HTTP": str(allow_insecure).lower()}
    if accepted:
        assert load_settings(None, env).base_url == base_url
    else:
        with pytest.raises(ConfigError, match=r"^CLOUDFLARE_BASE_URL: plain http is refused"):
            load_settings(None, env)


# --- credentials -----------------------------------------------------------------------------------------


def test_credentials_prefer_the_token() -> None:
    settings = load_settings(None, SECRET_ENV)
    credentials = settings.credentials()
    assert credentials.headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert credentials.secrets() == [TOKEN]


def test_credentials_email_and_key() -> None:
    settings = load_settings(None, {"CLOUDFLARE_EMAIL": "ops@example.com", "CLOUDFLARE_API_KEY": API_KEY})
    credentials = settings.credentials()
    assert credentials.headers() == {"X-Auth-Email": "ops@example.com", "X-Auth-Key": API_KEY}
    assert credentials.secrets() == [API_KEY]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"CLOUDFLARE_API_TOKEN": ""},
        {"CLOUDFLARE_EMAIL": "ops@example.com"},
        {"CLOUDFLARE_API_KEY": API_KEY},
        {"CLOUDFLARE_EMAIL": "", "CLOUDFLARE_API_KEY": API_KEY},
        {"CLOUDFLARE_EMAIL": "ops@example.com", "CLOUDFLARE_API_KEY": ""},
    ],
    ids=["nothing", "empty-token", "email-only", "key-only", "empty-email", "empty-key"],
)
def test_missing_credentials_name_the_token_variable(env: dict[str, str]) -> None:
    settings = load_settings(None, env)
    with pytest.raises(ConfigError, match=r"^CLOUDFLARE_API_TOKEN is not set") as info:
        settings.credentials()
    assert API_KEY not in str(info.value)


# --- secrets never shown -----------------------------------------------------------------------------------


def test_settings_repr_and_str_hide_secrets() -> None:
    settings = load_settings(None, {**SECRET_ENV, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_A})
    for text in (repr(settings), str(settings), repr(settings.model_dump())):
        for secret in (TOKEN, API_KEY, DB_PASSWORD):
            assert secret not in text
    assert ACCOUNT_A in repr(settings)  # not a secret, and useful when debugging


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials(token=SecretStr(TOKEN)),
        Credentials(email="ops@example.com", api_key=SecretStr(API_KEY)),
    ],
    ids=["token", "email-key"],
)
def test_credentials_repr_hides_secrets(credentials: Credentials) -> None:
    for text in (repr(credentials), str(credentials)):
        assert TOKEN not in text
        assert API_KEY not in text


SECRET_VALUE_CASES = [
    ({}, []),
    ({"CLOUDFLARE_API_TOKEN": TOKEN}, [TOKEN]),
    ({"CLOUDFLARE_API_KEY": API_KEY, "CLOUDFLARE_EMAIL": "a@b.c"}, [API_KEY]),
    (SECRET_ENV, [TOKEN, API_KEY, DB_PASSWORD]),
    ({"ARCHIVER_DATABASE_URL": "postgresql://user@db/archive"}, []),
    ({"ARCHIVER_DATABASE_URL": "mysql+pymysql://user:p%40ss@db/archive"}, ["p%40ss", "p@ss"]),
    ({"CLOUDFLARE_API_TOKEN": ""}, []),
]


@pytest.mark.parametrize(
    ("env", "expected"),
    SECRET_VALUE_CASES,
    ids=["none", "token", "key", "all", "db-without-password", "db-encoded-password", "empty-token"],
)
def test_secret_values(env: dict[str, str], expected: list[str]) -> None:
    assert sorted(load_settings(None, env).secret_values()) == sorted(expected)


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    config = tmp_path / "archiver.toml"
    config.write_text('interval_seconds = 12\naccount_id = ["0123456789abcdef0123456789abcdef"]\n')
    settings = load_settings(config, environ={"ARCHIVER_INTERVAL_SECONDS": "", "CLOUDFLARE_ACCOUNT_ID": ""})
    assert settings.interval_seconds == 12
    assert settings.account_ids == ["0123456789abcdef0123456789abcdef"]
