"""Webhook authentication (GitHub HMAC signatures, GitLab tokens) and the repository URLs
a push event names."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from reconciler.controller.webhook import repo_urls, verify

SECRET = "s3cret-hook"
BODY = b'{"ref": "refs/heads/main"}'


def github_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_github_signature_is_authentic() -> None:
    assert verify({"X-Hub-Signature-256": github_signature(BODY)}, BODY, SECRET) == "github"


@pytest.mark.parametrize(
    ("headers", "forge"),
    [
        ({"x-hub-signature-256": github_signature(BODY)}, "github"),
        ({"X-HUB-SIGNATURE-256": github_signature(BODY)}, "github"),
        ({"x-gitlab-token": SECRET}, "gitlab"),
        ({"X-GITLAB-TOKEN": SECRET}, "gitlab"),
    ],
)
def test_header_names_are_case_insensitive(headers: dict[str, str], forge: str) -> None:
    assert verify(headers, BODY, SECRET) == forge


@pytest.mark.parametrize(
    "signature",
    [
        github_signature(BODY, "another secret"),
        github_signature(BODY + b" "),  # the body was changed on the way
        github_signature(BODY).removeprefix("sha256="),
        "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),
        "sha256=",
        "",
        "sha256=" + "é" * 64,  # not ASCII: refused, not a TypeError
    ],
)
def test_wrong_github_signatures_are_refused(signature: str) -> None:
    assert verify({"X-Hub-Signature-256": signature}, BODY, SECRET) is None


def test_githubs_old_sha1_header_alone_is_not_enough() -> None:
    sha1 = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert verify({"X-Hub-Signature": sha1}, BODY, SECRET) is None


def test_gitlab_token() -> None:
    assert verify({"X-Gitlab-Token": SECRET}, BODY, SECRET) == "gitlab"
    assert verify({"X-Gitlab-Token": SECRET + "x"}, BODY, SECRET) is None
    assert verify({"X-Gitlab-Token": ""}, BODY, SECRET) is None
    assert verify({"X-Gitlab-Token": "ü"}, BODY, SECRET) is None


def test_missing_headers_are_refused() -> None:
    assert verify({}, BODY, SECRET) is None
    assert verify({"Content-Type": "application/json"}, BODY, SECRET) is None


def test_an_empty_secret_authenticates_nothing() -> None:
    assert verify({"X-Gitlab-Token": ""}, BODY, "") is None
    assert verify({"X-Hub-Signature-256": github_signature(BODY, "")}, BODY, "") is None


def test_a_wrong_github_signature_still_lets_a_right_gitlab_token_through() -> None:
    headers = {"X-Hub-Signature-256": github_signature(BODY, "x"), "X-Gitlab-Token": SECRET}
    assert verify(headers, BODY, SECRET) == "gitlab"


def test_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert verify({"X-Hub-Signature-256": github_signature(BODY)}, BODY, SECRET) == "github"
    assert verify({"X-Gitlab-Token": "nope"}, BODY, SECRET) is None
    assert [a for a, _ in compared] == [github_signature(BODY).encode(), b"nope"]


GITHUB_PUSH: dict[str, Any] = {
    "ref": "refs/heads/main",
    "repository": {
        "full_name": "org/models",
        "clone_url": "https://github.com/org/models.git",
        "ssh_url": "git@github.com:org/models.git",
        "html_url": "https://github.com/org/models",
        "git_url": "git://github.com/org/models.git",
        "url": "https://api.github.com/repos/org/models",
    },
}

GITLAB_PUSH: dict[str, Any] = {
    "object_kind": "push",
    "project": {
        "git_http_url": "https://gitlab.example.com/org/models.git",
        "git_ssh_url": "git@gitlab.example.com:org/models.git",
        "web_url": "https://gitlab.example.com/org/models",
    },
    "repository": {
        "git_http_url": "https://gitlab.example.com/org/models.git",
        "git_ssh_url": "git@gitlab.example.com:org/models.git",
        "homepage": "https://gitlab.example.com/org/models",
    },
}


def test_github_push_urls() -> None:
    assert repo_urls(json.dumps(GITHUB_PUSH).encode()) == [
        "https://github.com/org/models.git",
        "git@github.com:org/models.git",
        "https://github.com/org/models",
        "git://github.com/org/models.git",
    ]


def test_gitlab_push_urls_without_repeats() -> None:
    assert repo_urls(json.dumps(GITLAB_PUSH).encode()) == [
        "https://gitlab.example.com/org/models.git",
        "git@gitlab.example.com:org/models.git",
        "https://gitlab.example.com/org/models",
    ]


def test_github_form_encoded_payload() -> None:
    body = urlencode({"payload": json.dumps(GITHUB_PUSH)}).encode()
    assert repo_urls(body)[0] == "https://github.com/org/models.git"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"repository": "https://github.com/org/models"}',
        b'{"repository": {"clone_url": 42, "ssh_url": null, "html_url": ""}}',
        b'{"zen": "Keep it logically awesome.", "hook_id": 1}',  # GitHub's ping
    ],
)
def test_unusable_payloads_name_no_repository(payload: bytes) -> None:
    assert repo_urls(payload) == []
