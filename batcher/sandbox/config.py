"""Sandbox settings: credentials it accepts, limits it enforces, answer shapes and faults."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SCOPES = ("ZohoCRM.modules.ALL", "ZohoCRM.settings.cadences.READ")
ANSWER_SHAPES = ("v7", "v8")
SCHEDULED_MODES = ("off", "now", "later")
ERROR_WRAPPINGS = ("mixed", "top", "wrapped")
CREDITS_EXHAUSTED = ("429", "limit_exceeded")


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes the sandbox's behaviour; the credentials are fake sandbox values."""

    client_id: str = "sandbox-client-id"
    client_secret: str = field(default="sandbox-client-secret", repr=False)
    refresh_token: str = field(default="sandbox-refresh-token", repr=False)
    #: how long an access token really lives (seconds)
    token_ttl: float = 3600.0
    #: ``expires_in`` sent with a token; None tells the truth (rounded up)
    announced_ttl: int | None = None
    #: scopes every issued token carries
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    #: simultaneous un-enrol calls allowed; one more answers 429. None = unlimited
    concurrency_limit: int | None = 10
    #: un-enrol calls accepted per rolling second; None = unlimited
    rate_limit: float | None = None
    #: time every un-enrol call takes (so concurrency is real)
    latency: float = 0.0
    #: name of a profile in ``faults.PROFILES``
    fault_profile: str = "none"
    seed: int = 0
    #: largest page the cadences listing returns (smaller forces pagination)
    cadence_page_size: int = 200
    refresh_limit: int = 10
    refresh_window: float = 600.0
    #: "v7": one ``data[]`` entry per record; "v8": one ``cadences[]`` entry per cadence
    answer_shape: str = "v7"
    #: "off": apply and answer 200/207; "now": apply, answer 202; "later": answer 202, apply after
    #: ``scheduled_delay`` seconds
    scheduled: str = "off"
    scheduled_delay: float = 1.0
    #: whole-request errors (400s, INVALID_TOKEN, OAUTH_SCOPE_MISMATCH, NO_PERMISSION, 429,
    #: credits, INVALID_MODULE, INVALID_URL_PATTERN, 500) as a top-level object, wrapped in
    #: ``data[]``, or "mixed" (chosen per error from the seed, stable across runs)
    error_wrapping: str = "mixed"
    #: answer every un-enrol call 403 NO_PERMISSION (the user lacks the permission)
    no_permission: bool = False
    #: API calls (un-enrol calls and cadence listings: each costs a credit) the org's credits
    #: allow; past them every call is refused as ``credits_exhausted`` says. None = unlimited
    daily_credits: int | None = None
    #: how a call past the credits is answered: "429" is DESIGN.md §1 ("Over a limit: HTTP 429,
    #: TOO_MANY_REQUESTS"); "limit_exceeded" is a 400 LIMIT_EXCEEDED "due to" the credits, a
    #: reading no Zoho page documents (the un-enrol page's LIMIT_EXCEEDED is about the call's
    #: arrays), kept to prove the client stops on it too
    credits_exhausted: str = "429"
    #: delay of a "slow" fault: make it longer than the client's timeout
    slow_seconds: float = 3.0
    #: largest Retry-After the sandbox sends (seconds)
    retry_after_max: int = 2
    #: ``api_domain`` returned with tokens; None = the base URL the request came to
    api_domain: str | None = None
    #: whole-call refusals (INVALID_DATA, NOT_ALLOWED) name the refused id's ``json_path``;
    #: False: they name none, as some Zoho answers do, so the client must split to find it
    error_paths: bool = True
    #: every error answer echoes the request's secrets: API errors carry the whole Authorization
    #: header in ``message`` and ``details.echo``, token refusals the posted client_secret and
    #: refresh_token in ``error_description``; proves a client redacts all server text. Success
    #: answers, statuses, codes and what is applied do not change
    echo_auth: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (("answer_shape", self.answer_shape, ANSWER_SHAPES),
                                     ("scheduled", self.scheduled, SCHEDULED_MODES),
                                     ("error_wrapping", self.error_wrapping, ERROR_WRAPPINGS),
                                     ("credits_exhausted", self.credits_exhausted,
                                      CREDITS_EXHAUSTED)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
