"""Helpers shared by the SDK tests: status checks with readable failures, and repository shortcuts."""

import re
import uuid
from datetime import datetime, timezone

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SYSTEM_REPOSITORY_URL = "https://github.com/reversinglabs/reversinglabs-yara-rules"
MASKED_TOKEN = "********"
REPOSITORY_FIELDS = {"id", "url", "name", "source_branch", "source_type", "api_token",
                     "import_update_preferences", "is_custom", "last_modified", "user"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def describe(response: requests.Response) -> str:
    request = response.request
    body = request.body.decode(errors="replace") if isinstance(request.body, bytes) else request.body
    return (f"{request.method} {request.url} body={body!r} -> "
            f"{response.status_code} {response.text[:1000]!r}")


def expect_status(response: requests.Response, status: int) -> dict:
    """Asserts the status of a response the SDK did not raise on, and returns its JSON body."""
    assert response.status_code == status, describe(response)
    return response.json()


def expect_error(exc_type: type[Exception], call, *args, **kwargs) -> dict:
    """Calls an SDK method that must fail with `exc_type`; returns the error body after checking
    that it has Ruleyard's error shape (API.md 1.5)."""
    return expect_error_response(exc_type, call, *args, **kwargs).json()


def expect_error_response(exc_type: type[Exception], call, *args, **kwargs) -> requests.Response:
    """As expect_error, but returns the whole response."""
    try:
        response = call(*args, **kwargs)
    except Exception as exc:  # the SDK's errors carry the response; anything else propagates
        response = getattr(exc, "response_object", None)
        if response is None:
            raise
        assert isinstance(exc, exc_type), \
            f"expected {exc_type.__name__}, the SDK raised {type(exc).__name__}: {describe(response)}"
    else:
        pytest.fail(f"expected {exc_type.__name__}, the call succeeded: {describe(response)}")
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"].strip(), describe(response)
    assert isinstance(body.get("code"), str) and body["code"], describe(response)
    return response


def parse_timestamp(value: str) -> datetime:
    assert TIMESTAMP.match(value), f"not an RFC 3339 UTC timestamp with milliseconds: {value!r}"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def list_repositories(client: A1000, active_filter: str | None = None) -> list[dict]:
    """Every repository the filter selects, following pages by number."""
    items, page = [], 1
    while True:
        body = expect_status(client.get_yara_repositories(active_filter=active_filter, page_size=1000,
                                                          page_number=page), 200)
        items.extend(body["results"])
        if not body["next"]:
            assert len(items) == body["count"], f"count {body['count']} but {len(items)} items listed"
            return items
        page += 1


def find_repository(client: A1000, repository_id: int) -> dict | None:
    matches = [item for item in list_repositories(client) if item["id"] == repository_id]
    assert len(matches) <= 1, f"repository {repository_id} listed {len(matches)} times"
    return matches[0] if matches else None


def create_repository(client: A1000, url: str, name: str | None = None, source_branch: str = "",
                      api_token: str = "", import_update_preferences: int = 0) -> int:
    """Creates a repository through the SDK, checks the 201 answer and returns the new id."""
    response = client.create_yara_repository(url, name or unique("repo"), source_branch, api_token,
                                             import_update_preferences)
    body = expect_status(response, 201)
    assert body.get("message") == "Repository created.", describe(response)
    assert isinstance(body.get("id"), int) and not isinstance(body["id"], bool), describe(response)
    return body["id"]
