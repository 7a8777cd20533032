"""Bearer tokens for the model server's POST paths (`mlops serve-model --token-file`, MLOPS_SERVE_TOKEN)."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "MLOPS_SERVE_TOKEN"


class TokenError(ValueError):
    """The token file cannot be read, or holds no token."""


def load_token(token_file: Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """The bearer token prediction requests must carry: the first line of `token_file` (which wins), else
    MLOPS_SERVE_TOKEN, else None (no token: predictions are open, as before)."""
    if token_file is not None:
        try:
            lines = Path(token_file).expanduser().read_text().strip().splitlines()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenError(f"the token file {token_file} is empty")
        return token
    token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return token or None


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (constant-time comparison)."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())
