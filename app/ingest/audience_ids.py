"""Which audience ids a destination may learn from the data (``mapping_ids: "data"``).

A learned id is kept in Redis, passed to a Lua script as JSON and named in every status page
and ``/metrics`` answer, so an id that Lua's JSON cannot read (a lone UTF-16 surrogate, which
JSON may carry and UTF-8 cannot) or that is absurdly long is refused: that audience is left
out of its profile with the reason, the profile's other audiences go ahead.
"""

from __future__ import annotations

#: Longest audience id learned from the data (AEP's are 36-character UUIDs): each learned id
#: is kept in Redis and named in every status and /metrics answer, so one runaway id must
#: not grow them by megabytes.
MAX_AUDIENCE_ID_CHARS = 256
#: Destination-level counter (app/store/counters.py) of the audiences refused here.
AUDIENCE_IDS_INVALID = "audience_ids_invalid"


def audience_problem(audience: object) -> str | None:
    """None when ``audience`` may be learned, else why not."""
    if not isinstance(audience, str) or not audience:
        return "an audience id must be a non-empty string"
    if len(audience) > MAX_AUDIENCE_ID_CHARS:
        return f"the audience id is longer than {MAX_AUDIENCE_ID_CHARS} characters"
    try:
        audience.encode("utf-8")
    except UnicodeEncodeError:
        return "the audience id is not valid Unicode (it contains a lone surrogate)"
    return None


def shown(text: str) -> str:
    """``text`` fit to be echoed in an answer or a log: cut to ``MAX_AUDIENCE_ID_CHARS`` and
    with anything UTF-8 cannot carry written as an escape (``\\ud800``)."""
    cut = text if len(text) <= MAX_AUDIENCE_ID_CHARS else text[:MAX_AUDIENCE_ID_CHARS] + "..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")
