"""Secrets kept out of everything rowpilot writes or prints.

Three kinds of secret reach rowpilot: API keys (from the environment or a ``.env`` file,
never from a flag), credentials inside a URL (``http://user:secret@host/v1`` given to
``--base-url``), and the values of flags that carry one (``--api-key`` of ``rowpilot
simulate``, ``--credentials``). The command line is stored in the runs table and the lock
file and printed as the resume command, so it is redacted before any of that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 8
"""Shorter "keys" are not redacted from text: replacing every "a" of an error message for
a one-letter key would hide the message, and such a key protects nothing anyway."""

SECRET_FLAGS = frozenset({"--api-key", "--credentials", "--password", "--token"})
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")


def redact_secret(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced, when the secret is long enough to be one."""
    if secret and len(secret) >= MIN_SECRET_CHARS and secret in text:
        return text.replace(secret, REDACTED)
    return text


def redact_urls(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://[REDACTED]@host`` anywhere in text."""
    return _USERINFO.sub(lambda match: f"{match['scheme']}{REDACTED}@", text)


def redact_args(args: Sequence[str]) -> list[str]:
    """A command line fit to store and print: URL credentials and secret flags' values
    replaced (``--api-key VALUE`` and ``--api-key=VALUE`` alike)."""
    redacted: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
            continue
        flag, equals, _value = arg.partition("=")
        if flag in SECRET_FLAGS:
            if equals:
                redacted.append(f"{flag}={REDACTED}")
            else:
                redacted.append(arg)
                hide_next = True
            continue
        redacted.append(redact_urls(arg))
    return redacted
