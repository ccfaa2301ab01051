"""One small error hierarchy; CLIs turn these into a one-line message and exit 2."""

from __future__ import annotations

__all__ = ["KioskError", "ImageError", "CatalogueError", "BundleError", "ConfigError", "UpdateError",
           "first_validation_error"]


class KioskError(Exception):
    """Base for every error a user can cause and fix (bad file, bad value)."""


class ImageError(KioskError):
    """An image file could not be read or decoded."""


class CatalogueError(KioskError):
    """A catalogue folder or CSV is missing, malformed or empty."""


class BundleError(KioskError):
    """A bundle is missing a file, fails verification, or is inconsistent."""


class ConfigError(KioskError):
    """A configuration file or flag has an unknown key or a bad value."""


class UpdateError(KioskError):
    """A remote update was rejected; the message is the reason published."""


def first_validation_error(exc) -> tuple[str, str]:
    """(dotted location, message) of a pydantic ValidationError's first error,
    the form every one-line error about a bad file or payload uses."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
    return loc, str(first.get("msg"))
