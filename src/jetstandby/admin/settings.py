"""Admin API settings and where its bearer token comes from.

The token is a secret: it never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jetstandby.errors import ConfigError

# RFC 6750 ``b64token``: what may follow ``Bearer `` in an Authorization header.
_TOKEN_SYNTAX: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MASK: Final = "'***'"


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class AdminSettings:
    """Where the admin API listens and the bearer token its mutating endpoints require.

    ``port=0`` picks a free port (read it back from :attr:`AdminServer.url`). ``token`` may be
    ``None`` only with ``allow_no_token=True``; it must be an RFC 6750 token (letters, digits
    and ``-._~+/``, optionally ``=``-padded). Raises :class:`~jetstandby.errors.ConfigError`
    naming the bad field. The repr masks the token.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    allow_no_token: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host", "must be a non-empty host name or address")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError("port", f"must be an integer, got {type(self.port).__name__}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535 (0 picks a free port), got {self.port}")
        _check_token(self.token, allow_none=self.allow_no_token)

    def __repr__(self) -> str:
        token = "None" if self.token is None else _MASK
        return (
            f"AdminSettings(host={self.host!r}, port={self.port!r}, token={token}, "
            f"allow_no_token={self.allow_no_token!r})"
        )


def _check_token(token: str | None, *, allow_none: bool) -> None:
    if token is None:
        if not allow_none:
            raise ConfigError(
                "token", "is required for POST /admin/promote (or set allow_no_token=True)"
            )
        return
    if not isinstance(token, str) or not _TOKEN_SYNTAX.fullmatch(token):
        raise ConfigError(
            "token", "must be non-empty and use only letters, digits and -._~+/ (then any =)"
        )


def load_token(
    *,
    value: str | None = None,
    env: str | None = None,
    file: str | os.PathLike[str] | None = None,
) -> str | None:
    """Read the admin bearer token from one source, stripped of surrounding whitespace.

    Give at most one of ``value`` (the token itself), ``env`` (the name of an environment
    variable holding it) or ``file`` (a path to a file holding it); with none, returns ``None``.
    Raises :class:`~jetstandby.errors.ConfigError` if more than one is given, if the variable is
    unset or blank, or if the file is missing, unreadable, not UTF-8 or blank (the error names
    the variable or the file, never the token).
    """
    sources = (("value", value), ("env", env), ("file", file))
    given = [name for name, source in sources if source is not None]
    if len(given) > 1:
        raise ConfigError("token", f"give at most one token source, got {', '.join(given)}")
    if value is not None:
        return _non_blank(value, field="token", where="the given token")
    if env is not None:
        return _non_blank(os.environ.get(env, ""), field="token_env", where=f"${env}")
    if file is not None:
        return _non_blank(_read_file(Path(file)), field="token_file", where=str(file))
    return None


def _non_blank(raw: str, *, field: str, where: str) -> str:
    token = raw.strip()
    if not token:
        raise ConfigError(field, f"{where} is missing or empty")
    return token


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("token_file", f"{path} does not exist") from exc
    except UnicodeDecodeError:
        # ``from None``: the decode error would carry the file's bytes, i.e. the secret.
        raise ConfigError("token_file", f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError("token_file", f"cannot read {path}: {exc.strerror}") from exc
