"""Where to talk to Zoho and with which credentials.

Credentials come only from the environment (never flags: flags end up in shell history and ``ps``).
Endpoints are checked here once, so no later layer can send a token over plain http to a remote host
or follow an ``api_domain`` that is not Zoho's.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import httpx

from batcher.errors import AuthError, UsageError

#: data centre → (accounts server, API domain), DESIGN.md §1
DATA_CENTRES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "us": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    "uk": ("https://accounts.zoho.uk", "https://www.zohoapis.uk"),
})
DEFAULT_DC = "us"

REFRESH_VARS = ("ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET", "ZOHO_REFRESH_TOKEN")
ACCESS_VAR = "ZOHO_ACCESS_TOKEN"

_ZOHO_TLDS = "|".join(re.escape(api.split("zohoapis.", 1)[1]) for _, api in DATA_CENTRES.values())
_ZOHO_API_HOST = re.compile(rf"^(?:[a-z0-9-]+\.)+zohoapis\.(?:{_ZOHO_TLDS})$")
_NON_PRODUCTION = ("sandbox.", "developer.")


@dataclass(frozen=True, slots=True)
class Credentials:
    """OAuth material. Secrets are kept out of ``repr`` so a logged object leaks nothing."""

    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)

    @property
    def can_refresh(self) -> bool:
        return bool(self.client_id and self.client_secret and self.refresh_token)

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be printed (for redaction and leak scans)."""
        return tuple(s for s in (self.client_secret, self.refresh_token, self.access_token) if s)

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "<set>" if value else "<unset>"

        return (f"Credentials(client_id={self.client_id!r}, "
                f"client_secret={shown(self.client_secret)}, "
                f"refresh_token={shown(self.refresh_token)}, "
                f"access_token={shown(self.access_token)})")

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Endpoints:
    api_domain: str
    accounts_url: str


def load_credentials(env: Mapping[str, str]) -> Credentials:
    """Refresh-token flow when all three variables are set, else a plain access token."""
    values = {name: (env.get(name) or "").strip() or None for name in (*REFRESH_VARS, ACCESS_VAR)}
    for name, value in values.items():
        # a header value with a control character would be refused by the HTTP layer with the
        # whole value in its message; refuse it here, without printing it
        if value and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise UsageError(f"{name} contains a control character (a line break pasted with "
                             "it?); set it again to the bare value (it is not printed here)")
    client_id, client_secret, refresh_token = (values[name] for name in REFRESH_VARS)
    access_token = values[ACCESS_VAR]
    if client_id and client_secret and refresh_token:
        return Credentials(client_id, client_secret, refresh_token, access_token)
    if access_token:
        return Credentials(access_token=access_token)
    missing = [name for name in REFRESH_VARS if not values[name]]
    raise AuthError(
        "no usable Zoho credentials in the environment: set "
        f"{', '.join(REFRESH_VARS)} (missing: {', '.join(missing)}), "
        f"or set {ACCESS_VAR} for a short job"
    )


def is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, source: str) -> str:
    """Normalise a base URL and refuse plain http to anything but loopback."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise UsageError(f"{source}: {url!r} is not a valid URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"{source}: {url!r} must be an https:// URL with a host name")
    if parsed.query or parsed.fragment:
        raise UsageError(f"{source}: {url!r} must not carry a query or fragment")
    origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
    # /crm/v7 or /oauth/v2/token pasted from Zoho's pages (a gateway's own prefix is kept)
    if parsed.path.strip("/").split("/")[0].lower() in ("crm", "oauth"):
        raise UsageError(f"{source}: {url!r} must be the server's address only, without the "
                         f"path {parsed.path}: give {origin}")
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise UsageError(
            f"{source}: plain http:// is refused for {parsed.host} (tokens would travel "
            "unencrypted); use https://, or a loopback host such as 127.0.0.1 for a local sandbox"
        )
    return str(parsed).rstrip("/")


def _dc_urls(dc: str, source: str) -> tuple[str, str]:
    key = dc.strip().lower()
    if key not in DATA_CENTRES:
        raise UsageError(
            f"{source}: unknown data centre {dc!r}; valid ones: {', '.join(DATA_CENTRES)}"
        )
    return DATA_CENTRES[key]


def resolve_endpoints(api_domain: str | None, accounts_url: str | None, dc: str | None,
                      env: Mapping[str, str]) -> Endpoints:
    """Flags beat the environment; within each, an explicit URL beats the data centre."""
    env_api = (env.get("ZOHO_API_DOMAIN") or "").strip() or None
    env_accounts = (env.get("ZOHO_ACCOUNTS_URL") or "").strip() or None
    env_dc = (env.get("ZOHO_DC") or "").strip() or None
    flag_dc_urls = _dc_urls(dc, "--dc") if dc else None
    env_dc_urls = _dc_urls(env_dc, "ZOHO_DC") if env_dc else None
    default_urls = DATA_CENTRES[DEFAULT_DC]

    def pick(flag: str | None, flag_name: str, env_value: str | None, env_name: str,
             index: int) -> tuple[str, str | None]:
        """The URL, and None for its source when it is only the default data centre's."""
        candidates = (
            (flag, flag_name),
            (flag_dc_urls[index] if flag_dc_urls else None, "--dc"),
            (env_value, env_name),
            (env_dc_urls[index] if env_dc_urls else None, "ZOHO_DC"),
        )
        value, source = next(((v, s) for v, s in candidates if v), (None, None))
        if value is None:
            return default_urls[index], None
        return _check_url(value, source), source

    api, api_source = pick(api_domain, "--api-domain", env_api, "ZOHO_API_DOMAIN", 1)
    accounts, accounts_source = pick(accounts_url, "--accounts-url", env_accounts,
                                     "ZOHO_ACCOUNTS_URL", 0)
    # one URL given and the other not: the other is its data centre's (a refresh token of
    # zohoapis.eu is refused by accounts.zoho.com), or the same loopback server (a sandbox)
    if accounts_source is None and api_source is not None:
        accounts = _same_place(api, 0) or accounts
    elif api_source is None and accounts_source is not None:
        api = _same_place(accounts, 1) or api
    return Endpoints(api_domain=api, accounts_url=accounts)


def _same_place(url: str, index: int) -> str | None:
    """The accounts server (``index`` 0) or API domain (1) that goes with ``url``, the other of
    the two: the same loopback server, or the URL of the data centre of a Zoho host."""
    host = (httpx.URL(url).host or "").lower()
    if is_loopback(host):
        return url
    for accounts, api in DATA_CENTRES.values():
        if index == 0 and _ZOHO_API_HOST.match(host) and \
                host.split("zohoapis.", 1)[1] == api.split("zohoapis.", 1)[1]:
            return accounts
        if index == 1 and host == httpx.URL(accounts).host:
            return api
    return None


def accept_api_domain(configured: str, returned: str | None) -> str:
    """The api_domain to call after a token came back with ``returned``.

    A returned Zoho host corrects a wrong data centre. It is ignored when it is not Zoho's (a token
    must never be sent elsewhere), when the configured domain is loopback (a local sandbox or proxy
    stays in the loop; only another loopback URL is taken), and when it would move a sandbox or
    developer environment onto production.
    """
    if not returned or not isinstance(returned, str):
        return configured
    try:
        url = httpx.URL(returned.strip())
        conf = httpx.URL(configured)
    except (httpx.InvalidURL, TypeError):
        return configured
    host = (url.host or "").lower()
    if url.scheme not in ("http", "https") or not host or url.query or url.fragment:
        return configured
    if is_loopback(conf.host or ""):
        return str(url).rstrip("/") if is_loopback(host) else configured
    if url.scheme != "https" or not _ZOHO_API_HOST.match(host):
        return configured
    conf_host = (conf.host or "").lower()
    for prefix in _NON_PRODUCTION:
        if conf_host.startswith(prefix) and not host.startswith(prefix):
            return configured
    return f"https://{host}" + (f":{url.port}" if url.port else "")


_FILE_SETTINGS = {"dc": "ZOHO_DC", "api_domain": "ZOHO_API_DOMAIN",
                  "accounts_url": "ZOHO_ACCOUNTS_URL"}
_FILE_ENV_NAMES = {"client_id": "ZOHO_CLIENT_ID", "client_secret": "ZOHO_CLIENT_SECRET",
                   "refresh_token": "ZOHO_REFRESH_TOKEN", "access_token": "ZOHO_ACCESS_TOKEN"}


def env_with_config_file(path: str | Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` completed from a TOML file that names where things are, never secrets themselves::

        [zoho]
        dc = "eu"                                  # or api_domain / accounts_url
        [zoho.env]                                 # names of environment variables
        client_id = "ACME_ZOHO_CLIENT_ID"
        client_secret = "ACME_ZOHO_CLIENT_SECRET"
        refresh_token = "ACME_ZOHO_REFRESH_TOKEN"

    ``ZOHO_*`` variables already in the environment beat the file, as flags beat both.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a valid TOML file ({exc})") from None
    zoho = data.get("zoho", {})
    names = zoho.get("env", {}) if isinstance(zoho, dict) else None
    if not isinstance(zoho, dict) or not isinstance(names, dict) or set(data) - {"zoho"}:
        raise UsageError(f"{path}: expected only a [zoho] table with an optional [zoho.env]")
    for key in zoho:
        if key in _FILE_ENV_NAMES:
            raise UsageError(f"{path}: {key} must not be written in the file; put the name of "
                             f"the environment variable that holds it under [zoho.env]")
        if key not in _FILE_SETTINGS and key != "env":
            raise UsageError(f"{path}: unknown setting {key!r} in [zoho]; "
                             f"known: {', '.join(_FILE_SETTINGS)}")
    unknown = set(names) - set(_FILE_ENV_NAMES)
    if unknown:
        raise UsageError(f"{path}: unknown name(s) in [zoho.env]: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(_FILE_ENV_NAMES)}")
    merged = dict(env)
    for key, var in _FILE_SETTINGS.items():
        if key in zoho and not (env.get(var) or "").strip():
            merged[var] = str(zoho[key])
    for key, var in _FILE_ENV_NAMES.items():
        source = names.get(key)
        if source is not None and not (env.get(var) or "").strip() and env.get(str(source)):
            merged[var] = env[str(source)]
    return merged
