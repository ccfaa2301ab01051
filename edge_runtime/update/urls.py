"""Which URLs a kiosk may fetch: http(s) under its configured mirrors only.

The URL in an update command is not signed, and the manifest is fetched
before its signature can be checked. Without a rule, anyone who may publish
commands could make every kiosk connect wherever it likes behind the store's
firewall. So every URL the updater opens (the manifest, each artifact, each
redirect) must lie under one of ``[update] mirrors``: same scheme, host and
port, and a path below the mirror's path. This is checked before any
connection is made. Dot segments (``..``, also percent-encoded), backslashes
and user names in URLs are refused outright, so a path cannot climb out of
its prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

from edge_runtime.update.errors import Rejected

__all__ = ["UrlPolicy", "resolve_url", "parse_mirror", "ANY_HTTP"]

_DEFAULT_PORT = {"http": 80, "https": 443}
_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.I)


def _split(url: str) -> SplitResult:
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
        raise Rejected("url_refused", f"{url!r}: control characters, spaces or backslashes in URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT:
        raise Rejected("url_refused", f"{url!r}: only http:// and https:// URLs are fetched, "
                       f"not {scheme or 'this'}")
    if not parts.hostname or "@" in parts.netloc:
        raise Rejected("url_refused", f"{url!r}: no host, or a user name in the URL")
    try:
        _ = parts.port  # parsing it is the check
    except ValueError:
        raise Rejected("url_refused", f"{url!r}: bad port") from None
    if _DOT_SEGMENT.search(parts.path):
        raise Rejected("url_refused", f"{url!r}: '.' or '..' path segments")
    return parts


def _origin(p: SplitResult) -> tuple[str, str, int]:
    scheme = p.scheme.lower()
    return scheme, (p.hostname or "").lower(), p.port or _DEFAULT_PORT[scheme]


def parse_mirror(prefix: str) -> str:
    """Validate one ``[update] mirrors`` entry; returns it with a trailing '/'."""
    p = _split(prefix)
    if p.query or p.fragment:
        raise ValueError(f"mirror {prefix!r} must not have a query or fragment")
    return prefix if prefix.endswith("/") else prefix + "/"


@dataclass(frozen=True)
class UrlPolicy:
    """``mirrors``: URL prefixes a kiosk may fetch from (None: any http(s)
    URL, for the operator's own tools); ``allow_http``: plain http too."""

    mirrors: tuple[str, ...] | None
    allow_http: bool = True

    def check(self, url: str) -> str:
        """``url`` if this kiosk may connect to it, else Rejected("url_refused")."""
        p = _split(url)
        if p.scheme.lower() == "http" and not self.allow_http:
            raise Rejected("url_refused", f"{url}: plain http refused (update.allow_http = false)")
        if self.mirrors is None:
            return url
        origin, path = _origin(p), p.path or "/"
        for m in self.mirrors:
            mp = urlsplit(m)
            if _origin(mp) == origin and path.startswith(mp.path or "/"):
                return url
        raise Rejected("url_refused", f"{url}: not under any of update.mirrors "
                       f"({', '.join(self.mirrors) or 'none configured'})")


ANY_HTTP = UrlPolicy(None)


def resolve_url(base: str, ref: str, policy: UrlPolicy = ANY_HTTP) -> str:
    """``ref`` (absolute, or relative to ``base``, the manifest URL) as an
    absolute URL ``policy`` allows; the fragment is dropped."""
    return policy.check(urljoin(base, ref).split("#", 1)[0])
