"""Errors users see. Every failure a user can cause maps to one of these, with a message naming the problem."""


class DiffcError(Exception):
    """Base class of all errors raised on purpose by diffc-pipeline."""


class InvalidImageError(DiffcError):
    """An input image cannot be decoded, is too large, or has an unsupported layout."""


class InvalidInputError(DiffcError):
    """Bad input named by the message: an unknown codec or option, a value out of range, a missing column, a
    tensor of the wrong shape, dtype or values (NaN/inf). The CLI exits with code 2."""


class StreamError(DiffcError):
    """A bitstream is truncated, corrupted, or does not parse."""


class ModelMismatchError(DiffcError):
    """A stream or archive was made with another model or codec configuration than the one given."""


class ModelLoadError(DiffcError):
    """A model directory is missing files, holds an unsafe format (pickles), or has a bad config."""


class ArchiveError(DiffcError):
    """An archive is missing, corrupted, or of another format version."""


class ClusterError(DiffcError):
    """The Ray cluster cannot be reached or started: not the user's input, so a scheduler may retry."""


class DecodeTargetError(DiffcError):
    """The decode options ask for nothing decodable (no target, or no image selected), or for output that
    would clash with what OUTPUT holds."""


def is_whole(value: object) -> bool:
    """Whether ``value`` is an integer and not a bool (``True`` is an ``int`` to Python, never a count to us):
    the test for counts read from JSON or passed untyped through the Python API."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_at_least(options: object, **lowest: float) -> None:
    """Raise :class:`InvalidInputError` naming the first attribute of ``options`` below its lowest value
    (``shard_size=1``: at least 1), so that an API caller gets the same one-line error a CLI user gets from
    the option's range."""
    for name, low in lowest.items():
        value = getattr(options, name)
        if value < low:
            raise InvalidInputError(f"{name} must be at least {low}, got {value}")
