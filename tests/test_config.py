from __future__ import annotations

import pytest

from batcher.config import (
    DATA_CENTRES,
    Credentials,
    Endpoints,
    accept_api_domain,
    env_with_config_file,
    load_credentials,
    resolve_endpoints,
)
from batcher.errors import AuthError, UsageError

SECRET, REFRESH, ACCESS = "sec-ZZQ-1", "1000.ref-ZZQ-2", "1000.acc-ZZQ-3"
FULL = {"ZOHO_CLIENT_ID": "1000.CLIENT", "ZOHO_CLIENT_SECRET": SECRET,
        "ZOHO_REFRESH_TOKEN": REFRESH}


def test_data_centre_table_has_every_documented_dc():
    assert set(DATA_CENTRES) == {"us", "eu", "in", "au", "jp", "cn", "ca", "sa", "uk"}
    assert DATA_CENTRES["au"] == ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au")
    assert DATA_CENTRES["ca"] == ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca")


def test_refresh_flow_credentials():
    creds = load_credentials(FULL)
    assert creds.can_refresh and creds.refresh_token == REFRESH and creds.access_token is None


def test_access_token_only():
    creds = load_credentials({"ZOHO_ACCESS_TOKEN": f"  {ACCESS} "})
    assert creds.access_token == ACCESS and not creds.can_refresh


def test_incomplete_refresh_set_falls_back_to_access_token():
    creds = load_credentials({"ZOHO_CLIENT_ID": "x", "ZOHO_ACCESS_TOKEN": ACCESS})
    assert creds.access_token == ACCESS and not creds.can_refresh


@pytest.mark.parametrize("env, missing", [
    ({}, "ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN"),
    ({"ZOHO_CLIENT_ID": "id", "ZOHO_REFRESH_TOKEN": REFRESH}, "missing: ZOHO_CLIENT_SECRET)"),
    ({"ZOHO_CLIENT_SECRET": SECRET, "ZOHO_REFRESH_TOKEN": "  "},
     "missing: ZOHO_CLIENT_ID, ZOHO_REFRESH_TOKEN)"),
])
def test_missing_credentials_name_variables_never_values(env, missing):
    with pytest.raises(AuthError) as info:
        load_credentials(env)
    text = str(info.value)
    assert missing in text and "ZOHO_ACCESS_TOKEN" in text
    assert SECRET not in text and REFRESH not in text


def test_credentials_repr_and_str_hide_secrets():
    creds = Credentials("1000.CLIENT", SECRET, REFRESH, ACCESS)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SECRET not in text and REFRESH not in text and ACCESS not in text
        assert "1000.CLIENT" in text and "<set>" in text
    assert set(creds.secrets()) == {SECRET, REFRESH, ACCESS}


def test_default_endpoints_are_us():
    assert resolve_endpoints(None, None, None, {}) == Endpoints(
        "https://www.zohoapis.com", "https://accounts.zoho.com")


@pytest.mark.parametrize("dc", sorted(DATA_CENTRES))
def test_each_dc_resolves(dc):
    accounts, api = DATA_CENTRES[dc]
    assert resolve_endpoints(None, None, dc.upper(), {}) == Endpoints(api, accounts)


def test_env_dc_and_urls():
    assert resolve_endpoints(None, None, None, {"ZOHO_DC": "eu"}).api_domain == \
        "https://www.zohoapis.eu"
    env = {"ZOHO_DC": "eu", "ZOHO_API_DOMAIN": "https://sandbox.zohoapis.com/"}
    ends = resolve_endpoints(None, None, None, env)
    assert ends.api_domain == "https://sandbox.zohoapis.com"  # explicit URL beats dc
    assert ends.accounts_url == "https://accounts.zoho.eu"


def test_flags_beat_env():
    env = {"ZOHO_DC": "eu", "ZOHO_API_DOMAIN": "https://www.zohoapis.eu",
           "ZOHO_ACCOUNTS_URL": "https://accounts.zoho.eu"}
    assert resolve_endpoints(None, None, "jp", env) == Endpoints(
        "https://www.zohoapis.jp", "https://accounts.zoho.jp")
    ends = resolve_endpoints("http://127.0.0.1:8123", "http://localhost:8123", None, env)
    assert ends == Endpoints("http://127.0.0.1:8123", "http://localhost:8123")


@pytest.mark.parametrize("env, expected", [
    ({"ZOHO_API_DOMAIN": "https://www.zohoapis.eu"},
     ("https://www.zohoapis.eu", "https://accounts.zoho.eu")),
    ({"ZOHO_API_DOMAIN": "https://sandbox.zohoapis.com.au/"},
     ("https://sandbox.zohoapis.com.au", "https://accounts.zoho.com.au")),
    ({"ZOHO_ACCOUNTS_URL": "https://accounts.zohocloud.ca"},
     ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca")),
    ({"ZOHO_API_DOMAIN": "http://127.0.0.1:8765"},
     ("http://127.0.0.1:8765", "http://127.0.0.1:8765")),
    ({"ZOHO_API_DOMAIN": "https://www.zohoapis.eu", "ZOHO_DC": "in"},
     ("https://www.zohoapis.eu", "https://accounts.zoho.in")),
    ({"ZOHO_API_DOMAIN": "https://zoho-proxy.example.com"},
     ("https://zoho-proxy.example.com", "https://accounts.zoho.com")),
])
def test_one_url_set_brings_its_data_centres_other(env, expected):
    # README: "ZOHO_DC=eu  # or ZOHO_API_DOMAIN / ZOHO_ACCOUNTS_URL": an EU API domain alone
    # must not send the EU refresh token to accounts.zoho.com
    assert resolve_endpoints(None, None, None, env) == Endpoints(*expected)


@pytest.mark.parametrize("url, origin", [
    ("https://www.zohoapis.eu/crm/v7", "https://www.zohoapis.eu"),
    ("https://accounts.zoho.eu/oauth/v2/token", "https://accounts.zoho.eu"),
    ("http://127.0.0.1:8765/crm/v7/", "http://127.0.0.1:8765"),
])
def test_url_with_a_path_refused_naming_the_address_to_give(url, origin):
    with pytest.raises(UsageError, match=f"without the path .*: give {origin}$"):
        resolve_endpoints(None, None, None, {"ZOHO_API_DOMAIN": url})


def test_unknown_dc_lists_valid_ones():
    with pytest.raises(UsageError, match="us, eu, in, au, jp, cn, ca, sa, uk"):
        resolve_endpoints(None, None, "mars", {})
    with pytest.raises(UsageError, match="ZOHO_DC"):
        resolve_endpoints(None, None, None, {"ZOHO_DC": "xx"})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://127.5.6.7", "http://localhost:80",
                                 "http://[::1]:8000"])
def test_plain_http_allowed_for_loopback(url):
    assert resolve_endpoints(url, url, None, {}).api_domain.startswith("http://")


@pytest.mark.parametrize("url", ["http://www.zohoapis.com", "http://10.0.0.1:8000",
                                 "http://localhost.evil.com", "ftp://www.zohoapis.com",
                                 "www.zohoapis.com", "https://www.zohoapis.com/?x=1"])
def test_unsafe_or_malformed_urls_refused(url):
    with pytest.raises(UsageError):
        resolve_endpoints(url, None, None, {})
    with pytest.raises(UsageError, match="ZOHO_ACCOUNTS_URL"):
        resolve_endpoints(None, None, None, {"ZOHO_ACCOUNTS_URL": url})


@pytest.mark.parametrize("configured, returned, expected", [
    ("https://www.zohoapis.com", None, "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "https://www.zohoapis.eu", "https://www.zohoapis.eu"),
    ("https://www.zohoapis.com", "https://www.zohoapis.com.au/", "https://www.zohoapis.com.au"),
    ("https://www.zohoapis.com", "https://sandbox.zohoapis.in", "https://sandbox.zohoapis.in"),
    ("https://www.zohoapis.com", "https://developer.zohoapis.uk", "https://developer.zohoapis.uk"),
    ("https://www.zohoapis.com", "http://www.zohoapis.eu", "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "https://www.zohoapis.evil.com", "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "https://zohoapis.com.evil.io", "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "https://evil.com/www.zohoapis.com", "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "http://127.0.0.1:9000", "https://www.zohoapis.com"),
    ("https://www.zohoapis.com", "not a url", "https://www.zohoapis.com"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("http://127.0.0.1:8000", "https://www.zohoapis.com", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000", "http://10.1.1.1", "http://127.0.0.1:8000"),
    # a sandbox environment is never moved onto production
    ("https://sandbox.zohoapis.com", "https://www.zohoapis.com", "https://sandbox.zohoapis.com"),
])
def test_accept_api_domain(configured, returned, expected):
    assert accept_api_domain(configured, returned) == expected


CONFIG = """
[zoho]
dc = "eu"
[zoho.env]
client_id = "ACME_ID"
client_secret = "ACME_SECRET"
refresh_token = "ACME_REFRESH"
"""


def test_config_file_names_variables_and_settings(tmp_path):
    path = tmp_path / "batcher.toml"
    path.write_text(CONFIG)
    env = {"ACME_ID": "1000.X", "ACME_SECRET": SECRET, "ACME_REFRESH": REFRESH}
    merged = env_with_config_file(path, env)
    creds = load_credentials(merged)
    assert (creds.client_id, creds.client_secret, creds.refresh_token) == \
        ("1000.X", SECRET, REFRESH)
    assert resolve_endpoints(None, None, None, merged).api_domain == "https://www.zohoapis.eu"
    # the environment's own ZOHO_* variables beat the file
    merged = env_with_config_file(path, {**env, "ZOHO_DC": "in", "ZOHO_CLIENT_ID": "direct"})
    assert merged["ZOHO_DC"] == "in" and merged["ZOHO_CLIENT_ID"] == "direct"


@pytest.mark.parametrize("text, message", [
    ('[zoho]\nrefresh_token = "1000.abc"\n', "must not be written in the file"),
    ('[zoho]\nregion = "eu"\n', "unknown setting 'region'"),
    ('[zoho.env]\ntoken = "X"\n', "unknown name(s) in [zoho.env]: token"),
    ('[other]\n', "only a [zoho] table"),
    ('[zoho\n', "not a valid TOML file"),
])
def test_bad_config_files_are_usage_errors(tmp_path, text, message):
    path = tmp_path / "batcher.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        env_with_config_file(path, {})
    assert message in str(info.value) and "1000.abc" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        env_with_config_file(tmp_path / "nope.toml", {})


def test_a_gateways_own_path_prefix_is_kept():
    """Only a path pasted from Zoho's pages is refused: a gateway in front of Zoho may serve it
    under a prefix of its own."""
    ends = resolve_endpoints(None, None, None, {
        "ZOHO_API_DOMAIN": "https://gateway.example.com/zoho",
        "ZOHO_ACCOUNTS_URL": "https://gateway.example.com/zoho-accounts"})
    assert ends == Endpoints("https://gateway.example.com/zoho",
                             "https://gateway.example.com/zoho-accounts")
