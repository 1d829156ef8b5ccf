"""Secrets kept out of everything printed or written: what counts as a secret by its name, and the masking of
command lines and text. One rule for every place that masks values (storage options in error messages, the
command line recorded in eval results and benchmark JSON, a command submitted to a cluster), so that an
option masked in one is masked in all."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence

# "key" anywhere (api_key, access_key, aws_secret_access_key, --key), passw (password, passwd), passphrase,
# pwd, pin, dsn, private, auth but not author. Over-masking a harmless value in a log costs nothing;
# under-masking leaks a credential.
SECRET_NAME = re.compile(
    r"secret|token|passw|passphrase|pwd|(?<![a-z])pin(?![a-z])|dsn|private|credential|auth(?!or)|key", re.I
)

# Storage options known to hold no credential (fsspec's s3fs, gcsfs, adlfs): the only ones whose values tell
# jobs apart in a submission id and stay readable alone in a job's logs. Every other value counts as secret.
PLAIN_STORAGE_OPTIONS = frozenset(
    {
        "anon", "endpoint_url", "client_kwargs.endpoint_url", "client_kwargs.region_name", "region_name",
        "use_ssl", "requester_pays", "default_block_size", "default_fill_cache", "version_aware", "project",
        "account_name", "use_listings_cache", "listings_expiry_time", "skip_instance_cache", "config_kwargs.retries",
    }
)  # fmt: skip
# Environment variables whose values tell jobs apart (a region, a thread count) and hold no credential.
PLAIN_ENV = re.compile(r"REGION|THREADS|^TZ$|LOG_?LEVEL|^DIFFC_", re.I)


def looks_secret(name: str) -> bool:
    """Whether an option named ``name`` holds a credential (its value is masked, never printed or stored)."""
    return SECRET_NAME.search(name) is not None


REDACTED = "***"
# A secret value shorter than this is not masked inside free text (a message, a log): a 1-character "key"
# would mask every "k" of it, and no credential is that short. Arguments and options are masked whatever
# their length.
MASKED_LENGTH = 4
# Options of the form KEY=VALUE where VALUE may be a credential: the key stays readable, the value not.
# `-S` is the short form of diffc's own --storage-option.
_KEY_VALUE_OPTIONS = frozenset({"--storage-option", "--storage-options", "-S"})
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&][^=&#]*(?:sig|signature|token|secret|key|credential|passw)[^=&#]*=)[^&#]*", re.I
)


def redact_text(text: str) -> str:
    """Mask passwords in URLs (``s3://user:pw@host``) and signature/token query parameters."""
    return _mask_query(_URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text))


def _mask_query(text: str) -> str:
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)


_URL_PASSWORD = re.compile(r"(?P<user>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")


def identity_args(args: Sequence[str]) -> list[str]:
    """The arguments with credentials masked, for telling jobs apart (a submission id, whose hash is public):
    unlike :func:`redact_args`, a storage option known to be plain (:data:`PLAIN_STORAGE_OPTIONS`: an endpoint
    URL, ``anon=true``) and a URL's user name stay, since two jobs that differ only there are two jobs; every
    other storage option, passwords, secret-named options and secret query parameters are masked, so no
    credential enters the hash (where a weak one could be confirmed offline) and a rotated one is the same job."""
    out: list[str] = []
    for i, (arg, masked) in enumerate(zip(args, redact_args(args), strict=True)):
        name, sep, value = arg.partition("=")
        if arg.startswith("-S") and len(arg) > 2:
            item: str | None = arg[2:]
        elif name in _KEY_VALUE_OPTIONS and sep:
            item = value
        elif i and args[i - 1] in _KEY_VALUE_OPTIONS:
            item = arg
        else:
            item = None
        plain_option = item is not None and "=" in item and item.partition("=")[0] in PLAIN_STORAGE_OPTIONS
        if arg == masked:
            out.append(arg)
        elif plain_option or (item is None and not arg.startswith("-") and masked == redact_text(arg)):
            out.append(_mask_passwords(arg))  # an endpoint, a URL: its passwords masked, the rest kept
        else:
            out.append(masked)
    return out


def _mask_passwords(text: str) -> str:
    """Passwords in URLs and secret query parameters masked; user names kept (unlike :func:`redact_text`)."""
    return _mask_query(_URL_PASSWORD.sub(lambda m: f"{m['user']}:{REDACTED}@", text))


def _mask_key_value(item: str) -> str:
    key, sep, _ = item.partition("=")
    return f"{key}={REDACTED}" if sep else REDACTED


def redact_args(args: Sequence[str]) -> list[str]:
    """The arguments with credential values masked: ``-S`` / ``--storage-option`` values, options named like
    secrets (:func:`looks_secret`), passwords in URLs and secret query parameters.

    A secret-named option takes the next argument as its value unless that one starts with ``-``; a
    secret-named *flag* followed by a positional would mask the positional, an accepted over-masking.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        following = args[i + 1] if i + 1 < len(args) else None
        name, sep, value = arg.partition("=")
        if arg.startswith("-S") and len(arg) > 2:  # `-SKEY=VALUE`, the short option glued to its value
            out.append(f"-S{_mask_key_value(arg[2:])}")
        elif name in _KEY_VALUE_OPTIONS:
            if sep:
                out.append(f"{name}={_mask_key_value(value)}")
            else:
                out.append(arg)
                if following is not None:
                    out.append(_mask_key_value(following))
                    i += 1
        elif arg.startswith("-") and looks_secret(name):  # by name: `--aws-secret-key x`, whatever defines it
            out.append(f"{name}={REDACTED}" if sep else arg)
            if not sep and following is not None and not following.startswith("-"):
                out.append(REDACTED)
                i += 1
        else:
            out.append(redact_text(arg))
        i += 1
    return out


def command_line(argv: Sequence[str]) -> str:
    """``diffc ARGS`` as run, secrets masked: what eval results and benchmark JSON record."""
    return shlex.join(["diffc", *redact_args(argv[1:])])


def log_redactor(args: Sequence[str]) -> Callable[[str], str]:
    """A function masking, in any text (a job's logs, which echo its entrypoint), the credentials ``args``
    carry: each argument :func:`redact_args` would mask is replaced by its masked form, and the secret part
    of a masked ``KEY=VALUE`` wherever it appears alone (values of :data:`MASKED_LENGTH`+ characters: shorter
    ones would mask ordinary words). Also :func:`redact_text`."""
    masked = redact_args(args)  # one output per argument, in order
    pairs = {a: r for a, r in zip(args, masked, strict=True) if a != r}
    # Ray echoes the entrypoint as shlex.join wrote it: a value holding a quote or a space is quoted there
    # ('it'"'"'s'), where neither it nor its secret part is a substring any more.
    pairs.update({shlex.quote(a): shlex.quote(r) for a, r in list(pairs.items()) if shlex.quote(a) != a})
    for a, r in list(pairs.items()):
        value = a.partition("=")[2] if r.endswith(f"={REDACTED}") else (a if r == REDACTED else "")
        value = value.partition("=")[2] if a.startswith(("-S", "--storage-option")) and "=" in value else value
        item = a.partition("=")[2] if a.startswith("--storage-option") else a.removeprefix("-S")
        key = item.partition("=")[0] if "=" in item else ""  # a storage option's key, if this is one
        # alone, a value is masked wherever it appears, unless it is a plain option's short value
        # (`-S anon=true` masked every "true" of the logs)
        if len(value) >= MASKED_LENGTH and (key not in PLAIN_STORAGE_OPTIONS or len(value) >= 12 or r == REDACTED):
            pairs[value] = REDACTED
    ordered = sorted(pairs, key=len, reverse=True)  # a token before any value inside it

    def redact(text: str) -> str:
        for original in ordered:
            text = text.replace(original, pairs[original])
        return redact_text(text)

    return redact
