"""Why an update was refused, by category: what leaves the kiosk and what stays.

Anyone allowed to publish commands can make a kiosk fetch a URL, so the raw
text of a failure (socket errors, HTTP status lines, host names, timings)
would turn the update channel into a probe of the store's network. The
kiosk therefore publishes on ``update/status`` only a category and a fixed
sentence for it (``error`` and ``reason``), plus details taken from signed or
local data (versions); the full detail goes to the kiosk's own log.

``Rejected`` carries both. ``phase(category)`` tags any other UpdateError
raised inside a step (a fetch, a signature check) with the step's category.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from models.errors import UpdateError

__all__ = ["CATEGORIES", "Rejected", "Cancelled", "phase", "public_reason", "category_of"]

CATEGORIES: dict[str, str] = {
    "invalid_command": "the command is malformed or too large",
    "url_refused": "the URL is not under one of this kiosk's update mirrors",
    "busy": "too many commands are waiting; send it again later",
    "superseded": "a newer command arrived; this one was abandoned",
    "stopping": "the kiosk is stopping",
    "manifest_unavailable": "the manifest could not be fetched within the deadline",
    "signature": "the manifest is not signed by a pinned key",
    "manifest_invalid": "the signed manifest is not a valid release manifest",
    "version_floor": "the release is not newer than this kiosk's version floor",
    "revoked": "the release has been revoked",
    "expired": "the manifest has expired",
    "incompatible": "the release is not compatible with this kiosk",
    "too_large": "the release exceeds this kiosk's size or disk limits",
    "artifact_unavailable": "an artifact could not be downloaded within the deadline",
    "artifact_mismatch": "an artifact does not match the signed manifest",
    "self_test": "the release failed its verification or self-test",
    "engine": "no TensorRT engine could be prepared for this device",
    "no_previous": "there is no previous release to roll back to",
    "revocation_invalid": "the revocation is not signed by a pinned key or is malformed",
    "io_error": "a local file operation failed (see the kiosk's log)",
    "internal": "internal error (see the kiosk's log)",
}


class Rejected(UpdateError):
    """An update refused for a reason of ``category``. ``str(exc)`` is the
    detail for the local log; ``public`` is what update/status may carry."""

    def __init__(self, category: str, detail: str, *, public: str | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown rejection category {category!r}")
        super().__init__(detail)
        self.category = category
        self.public = public or CATEGORIES[category]


class Cancelled(UpdateError):
    """A wait was abandoned because its cancel condition was set; the caller
    knows why (a newer command, or the kiosk stopping)."""


@contextlib.contextmanager
def phase(category: str) -> Iterator[None]:
    """Inside this block, an UpdateError that has no category yet gets ``category``."""
    try:
        yield
    except (Rejected, Cancelled):
        raise
    except UpdateError as exc:
        raise Rejected(category, str(exc)) from None


def category_of(exc: BaseException) -> str:
    if isinstance(exc, Rejected):
        return exc.category
    if isinstance(exc, OSError):
        return "io_error"
    return "internal"


def public_reason(exc: BaseException) -> str:
    """The sentence update/status carries for ``exc``: never its raw text."""
    if isinstance(exc, Rejected):
        return exc.public
    return CATEGORIES[category_of(exc)]
