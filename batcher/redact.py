"""Secrets out of every text that leaves the process, including texts the server sent back.

A Zoho answer may echo the request's ``Authorization`` header, a proxy page may quote it, and an
exception may carry a header value. Every server-supplied text and every message batcher prints or
stores passes through one :class:`Redactor`, which knows the run's secrets (client secret, refresh
token, every access token obtained) and also masks anything shaped like a Zoho credential.

A server may change what it echoes: a code is upper-cased (Zoho's codes are; batcher upper-cases
them too), a token cut in two lands in two fields, a message is cut short, a proxy quotes a
header base64- or URL-encoded. Secrets are found whatever their case, also in those encodings,
and any piece of one (12 characters or more) within a word is masked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
#: a credential after its scheme word or parameter name, whoever issued it
_SHAPES = re.compile(
    r"(?i)(\b(?:zoho-oauthtoken|bearer)\s+|\b(?:client_secret|refresh_token|access_token)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;)]+")
#: Zoho's OAuth tokens, ``1000.<hex>.<hex>``, also when a text cut short ends inside one
_ZOHO_TOKEN = re.compile(
    r"(?i)\b1000\.[0-9a-f]{16,}\.[0-9a-f]{16,}\b|\b1000\.[0-9a-f]{8,}(?:\.[0-9a-f]*)?$")
_SHORTEST = 4  # shorter "secrets" would mask ordinary words
#: the shortest piece of a secret masked on its own (within a word of the text, or at its end
#: when the text was cut short): shorter ones cannot be told from ordinary text (every Zoho
#: token starts ``1000.``; a message may end in ``1000``)
_SHORTEST_CUT = 12
#: a word as a piece of a secret may stand in a text: between quotes, spaces, ``=`` or ``:``
_WORD = re.compile(rf"[\w.~+/-]{{{_SHORTEST_CUT},}}")


#: texts up to this long are remembered with their redaction: a server repeats the same few codes
#: and messages in every answer ("SUCCESS", "records manually unenrolled")
_REMEMBER_CHARS = 1000
_REMEMBERED = 512  # texts remembered at most (then forgotten all at once)


class Redactor:
    """``redactor(text)`` → ``text`` with every known secret and credential shape masked.

    Secrets are added as they become known (:meth:`add`, e.g. each refreshed access token); the
    set is replaced, never mutated, so a call from another thread sees a consistent one. Short
    texts are remembered with their redaction, in a memo that belongs to one set of secrets: a
    new secret starts a new memo, so no text is ever answered as redacted of fewer secrets.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._known: tuple[_Secrets, dict[str, str]] = (_Secrets(()), {})  # secrets, their memo
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _SHORTEST or secret in self._secrets:
            return
        self._secrets = (*self._secrets, secret)
        # longest first: a secret that contains another is masked whole
        forms = {*self._secrets, *(f for s in self._secrets for f in _url_forms(s))}
        self._known = (_Secrets(tuple(sorted(forms, key=len, reverse=True)),
                                tuple(c for s in self._secrets for c in _base64_cores(s))), {})

    def __call__(self, text: str) -> str:
        if not text:
            return text
        secrets, memo = self._known  # one consistent pair, whatever another thread adds
        done = memo.get(text)
        if done is None:
            done = self._redact(text, secrets)
            if len(text) <= _REMEMBER_CHARS:
                if len(memo) >= _REMEMBERED:
                    memo.clear()
                memo[text] = done
        return done

    @staticmethod
    def _redact(text: str, secrets: _Secrets) -> str:
        if secrets.anywhere is not None:
            text = secrets.anywhere.sub(MASK, text)
            low = text.lower()
            for secret in secrets.lowered:  # a message cut to a length may end with one's start
                start = low.rfind(secret[:_SHORTEST_CUT], max(0, len(low) - len(secret)))
                if start >= 0 and len(secret) > _SHORTEST_CUT and secret.startswith(low[start:]):
                    text = text[:start] + MASK
                    low = text.lower()
            text = _WORD.sub(secrets.piece, text)
        return _ZOHO_TOKEN.sub(MASK, _SHAPES.sub(rf"\1{MASK}", text))

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


def _url_forms(secret: str) -> set[str]:
    """``secret`` URL-encoded, as a form body or a query string echoed back carries it."""
    return {quote(secret, safe=""), quote_plus(secret)} - {secret}


def _base64_cores(secret: str) -> list[str]:
    """What the base64 (standard or URL-safe alphabet) of any text that holds ``secret`` holds of
    it — a proxy page quoting the header ``Zoho-oauthtoken <token>`` encoded, or a form body.
    Where the secret starts in that text decides how its bytes fall into base64's groups of
    three, so each of the three alignments gives a core (the groups made of the secret's bytes
    only) that the encoding holds whatever stands around it. Masked as pieces are (any stretch of
    12 characters, within a word): base64 is one word."""
    raw, cores = secret.encode("utf-8"), []
    for start in range(3):
        core = raw[start:len(raw) - (len(raw) - start) % 3]
        cores += [base64.b64encode(core).decode("ascii"),
                  base64.urlsafe_b64encode(core).decode("ascii")]
    return [c for c in cores if len(c) >= _SHORTEST_CUT]


class _Secrets:
    """One set of secrets (longest first: one that contains another is masked whole) as the
    redaction looks for them: anywhere in any case, and as pieces (any stretch of 12 characters
    of one, within a word of the text); ``encoded`` forms (base64) as pieces only."""

    def __init__(self, secrets: tuple[str, ...], encoded: tuple[str, ...] = ()) -> None:
        self.lowered = tuple(s.lower() for s in secrets)
        #: every stretch of _SHORTEST_CUT characters of every secret and encoded form
        self.windows = {s[i:i + _SHORTEST_CUT] for s in (*self.lowered, *map(str.lower, encoded))
                        for i in range(len(s) - _SHORTEST_CUT + 1)}
        self.anywhere = re.compile("|".join(map(re.escape, secrets)), re.IGNORECASE) \
            if secrets else None

    def piece(self, word: re.Match[str]) -> str:
        """The word with every stretch that is a piece of a secret masked: a piece is found by
        its windows of ``_SHORTEST_CUT`` characters, wherever it stands in the word (cut short
        with "...", two halves glued with "_")."""
        text = word.group()
        low, n = text.lower(), _SHORTEST_CUT
        hits = [i for i in range(len(low) - n + 1) if low[i:i + n] in self.windows]
        if not hits:
            return text
        out: list[str] = []
        end: int | None = None  # where the stretch masked last ends
        for i in hits:
            if end is None or i > end:  # a new stretch: the text before it, then the mask
                out += [text[end or 0:i], MASK]
            end = i + n
        out.append(text[end:])
        return "".join(out)
