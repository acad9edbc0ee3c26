"""Masks credentials in error texts before they are logged, stored or shown.

Driver errors may quote the connection string they failed on (libpq does for
a malformed URI), and every error text ends up in the log, in parked
messages, in the admin API and in exports. ``redact`` is applied wherever an
error text leaves a destination or enters a DLQ message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# ``scheme://user:password@host``: the password is everything between the
# first colon of the user info and the last ``@`` of the word (a password may
# itself hold an unescaped ``@``).
_URI_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@'\"]*):[^\s'\"]*@")

# ``password=...`` (keyword DSNs, URI query strings), ``"token": "..."``
# (JSON, Python reprs), ``PASSWORD '...'`` (SQL): any key ending in one of
# these words, then ``=`` or ``:`` (or only spaces before a quoted value).
_SECRET_KEY = (
    r"[\w.\-]*?(?:password|passwd|pwd|secret|token|private_key|privatekey|passphrase|api_?key)"
)
_QUOTED = r"'(?:[^'\\]|\\.)*(?:'|$)|\"(?:[^\"\\]|\\.)*(?:\"|$)"  # an unclosed quote runs to the end
_KEY_VALUE = re.compile(
    rf"(?i)((['\"]?)\b{_SECRET_KEY}\2(?:\s*[=:]\s*|\s+(?=['\"])))({_QUOTED}|[^\s&'\"]+)"
)

# A PEM private key quoted whole (its body spans lines).
_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)

_MIN_LITERAL = 4  # shorter known secrets would mask ordinary words; the patterns still apply


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with credentials replaced by ``***``.

    Masks the password of ``scheme://user:password@`` URIs, the values of
    password/secret/token/private key settings in ``key=value``,
    ``key: value`` and ``KEY 'value'`` forms (quoted values included), PEM
    private keys, and every occurrence of the known ``secrets`` (e.g. the
    configured password).
    """
    for secret in secrets:
        if secret and len(secret) >= _MIN_LITERAL:
            text = text.replace(secret, MASK)
    text = _PEM_KEY.sub(MASK, text)
    text = _URI_USERINFO.sub(rf"\1:{MASK}@", text)
    return _KEY_VALUE.sub(rf"\1{MASK}", text)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s text (its type name when empty), as log lines show it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
