"""Exceptions and warnings of the configuration readers and writers.

Every corrupt or inconsistent file raises a :class:`ConfigFormatError` (a ``ValueError``)
whose message names the file, what was expected and what was found; a reader never returns a
silently wrong field.
"""

from __future__ import annotations

from app.errors import StorageError as _AppStorageError


class ConfigFormatError(ValueError):
    """A configuration file is malformed, truncated or inconsistent."""


class ChecksumError(ConfigFormatError):
    """The data do not match the checksum recorded in the file."""


class MissingChecksumWarning(UserWarning):
    """The file carries no checksum, so its payload could not be verified."""


class InvalidFieldError(ConfigFormatError):
    """The payload was read, but is not a valid field: non-finite entries, links that are
    not unitary to the precision of the file, or a size that disagrees with the header."""


class StorageError(_AppStorageError):
    """Writing a file failed for lack of space/quota or an I/O error of the storage.

    Raised (on every rank of the writing communicator) with one message naming the file, the
    space the write needed and the space left; the write's temporary file has been removed
    and the previous version of the file is intact. ``trivhmc`` exits with the storage exit
    status of :class:`app.errors.StorageError` (8, docs/errors.md) and no traceback.
    """
