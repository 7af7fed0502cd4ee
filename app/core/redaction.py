"""What must never leave the process: secrets and prospects' data, found by name and by shape.

Shared by the log formatter (``app/ops/logs.py``) and Sentry's hooks (``app/ops/sentry.py``):
keys are matched by name (a token's or a prospect attribute's), free text by pattern
(``Bearer …``, ``osk_…`` API keys, ``access_token=…``, e-mail addresses, ``customN: …``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

FILTERED = "[Filtered]"
#: Shorter secret values are not searched for by value (they would match ordinary text).
MIN_SECRET_LEN = 8

#: Names whose values are secrets wherever they appear.
SECRET_KEY = re.compile(
    r"(?i)^(authorization|proxy-authorization|x-api-key|api[_-]?key|cookies?|set-cookie"
    r"|.*token|.*secret|.*password|passwd|dsn|credentials?|webhook_url)$"
)
#: Names that hold (or are likely to hold) a prospect's attributes or a request body.
PII_KEY = re.compile(
    r"(?i)^(profiles?|fields|attributes|attrs|identity_?map|segment_?membership|body|payload"
    r"|data|text|raw|lines?|args|kwargs|pending|snapshot|values?|changes|records?|results?"
    r"|custom\d+|emails?|(?:first|last|middle|full|nick|display|user)?_?name|phones?.*|title"
    r"|company|occupation|address.*)$"
)

_KEY = (
    r"access_token|refresh_token|id_token|client_secret|password|api[_-]?key|x-api-key"
    r"|authorization|token|secret|custom\d+|emails?|first_?name|last_?name|name|value"
)
#: Not inside a longer name: "re-authorization", "my_token_count" and "x.token" are not keys.
_WHOLE = r"(?<![\w.-])"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=:-]+"), rf"\1 {FILTERED}"),
    (re.compile(r"\bosk_[A-Za-z0-9_-]+"), f"osk_{FILTERED}"),
    # OAuth callback parameters (the access log's /oauth/callback?code=…&state=…): only as
    # query parameters, so ordinary "code: 500" or "state=active" text stays readable.
    (re.compile(r"(?i)([?&](?:code|state)=)[^&#\s\"']+"), rf"\1{FILTERED}"),
    # key=value, key: value, "key": "value", 'key': 'value' (JSON, reprs, query strings). The
    # key must be a whole name ("re-authorization: ..." in prose is not one), and prose after
    # "key: " is kept unless it looks like a value (no spaces before the next separator).
    (
        re.compile(rf"(?i)([\"']?{_WHOLE}(?:{_KEY})[\"']?\s*[:=]\s*)([\"'])(?:(?!\2).)*\2"),
        rf"\1\2{FILTERED}\2",
    ),
    (
        re.compile(rf"(?i)([\"']?{_WHOLE}(?:{_KEY})[\"']?\s*[:=]\s*)([^\s\"',;&{{}}\[\]()]+)"),
        rf"\1{FILTERED}",
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
]


#: Secrets this process knows by value (its settings', the tokens it decrypted): replaced
#: wherever they appear. Insertion-ordered, so the oldest tokens are forgotten first.
_known: dict[str, None] = {}
#: Tokens rotate every couple of hours: keep the newest this many, so redaction stays cheap.
MAX_KNOWN = 1024


def remember_secret(value: str) -> None:
    """Redact ``value`` by value from now on (an Outreach token has no recognisable shape)."""
    if len(value) < MIN_SECRET_LEN:
        return
    _known.pop(value, None)
    _known[value] = None
    while len(_known) > MAX_KNOWN:
        del _known[next(iter(_known))]


def remember_secrets(settings: BaseModel) -> None:
    """Redact the values of ``settings``' secret fields (``SecretStr``) by value too."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            remember_secret(value.get_secret_value())


def redact_text(text: str) -> str:
    """``text`` with every token, API key, e-mail address and named prospect value replaced."""
    for secret in list(_known):
        if secret in text:
            text = text.replace(secret, FILTERED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def scrub(value: Any, *, pii_keys: bool = True) -> Any:
    """A copy of ``value`` (JSON-like) with secret (and, if ``pii_keys``, prospect) keys'
    values replaced and every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _scrub_item(k, v, pii_keys) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, pii_keys=pii_keys) for v in value]
    return value


def _scrub_item(key: object, value: Any, pii_keys: bool) -> Any:
    name = str(key)
    if SECRET_KEY.match(name) or (pii_keys and PII_KEY.match(name)):
        return FILTERED if value not in (None, "", [], {}) else value
    return scrub(value, pii_keys=pii_keys)
