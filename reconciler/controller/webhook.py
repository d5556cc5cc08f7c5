"""`POST /hooks/git`: is a push event authentic, and which repositories does it name.

GitHub signs the body (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`);
GitLab sends the secret itself (`X-Gitlab-Token`). Both are compared in constant time.
An authentic event only asks the loops to poll now: its payload is never trusted for
anything else — the loops read the branch head from the repository themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

# Where each forge names the pushed repository: GitHub's `repository`, GitLab's
# `project` (and its older `repository` block, which has the same git_* keys).
_URL_KEYS = (
    "clone_url",
    "ssh_url",
    "html_url",
    "git_url",
    "git_http_url",
    "git_ssh_url",
    "web_url",
)


def verify(headers: Mapping[str, str], body: bytes, secret: str) -> str | None:
    """'github' or 'gitlab' when the request is authentic, else None. Header names are
    case-insensitive; an empty secret authenticates nothing."""
    if not secret:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    key = secret.encode()
    signature = lowered.get("x-hub-signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(_bytes(signature.strip().lower()), expected.encode()):
            return "github"
    if _right_token(lowered, key):
        return "gitlab"
    return None


def may_be_authentic(headers: Mapping[str, str], secret: str) -> bool:
    """Whether a request is worth reading the body of: it carries the right GitLab token,
    or a well-formed GitHub signature (which only the body can confirm)."""
    if not secret:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get("x-hub-signature-256", "").strip().lower()
    digest = signature.removeprefix("sha256=")
    well_formed = (
        signature.startswith("sha256=")
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    )
    return well_formed or _right_token(lowered, secret.encode())


def repo_urls(payload: bytes) -> list[str]:
    """Repository URLs named by a push event, in payload order without repeats; [] when
    the payload is not a JSON object (GitHub's form-encoded `payload=` included)."""
    event = _parse(payload)
    urls: list[str] = []
    for block in ("repository", "project"):
        described = event.get(block)
        if not isinstance(described, dict):
            continue
        for key in _URL_KEYS:
            url = described.get(key)
            if isinstance(url, str) and url and url not in urls:
                urls.append(url)
    return urls


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        text = payload.decode()
        if text.startswith("payload="):  # GitHub's application/x-www-form-urlencoded
            text = parse_qs(text).get("payload", [""])[0]
        event = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):  # too deep: unreadable too
        return {}
    return event if isinstance(event, dict) else {}


def _right_token(lowered: Mapping[str, str], key: bytes) -> bool:
    token = lowered.get("x-gitlab-token")
    return token is not None and hmac.compare_digest(_bytes(token), key)


def _bytes(header: str) -> bytes:
    # http.server decodes headers as latin-1; compare_digest on str refuses non-ASCII.
    return header.encode("latin-1", "replace")
