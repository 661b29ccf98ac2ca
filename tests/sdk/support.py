"""Helpers shared by the SDK tests: status checks with readable failures, and repository, import and
ruleset shortcuts."""

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SYSTEM_REPOSITORY_URL = "https://github.com/reversinglabs/reversinglabs-yara-rules"
MASKED_TOKEN = "********"
REPOSITORY_FIELDS = {"id", "url", "name", "source_branch", "source_type", "api_token",
                     "import_update_preferences", "is_custom", "last_modified", "user"}
RULESET_FIELDS = {"name", "owner", "status", "system_ruleset", "cloud_synced", "last_matched",
                  "malicious_match_count", "suspicious_match_count", "goodware_match_count", "unknown_match_count",
                  "repository", "source_path", "revision", "published_revision", "rule_count"}
DIAGNOSTIC_FIELDS = {"severity", "code", "message", "line", "column"}
# One repository's outcome, as an update run records it and an explicit import answers it (BEHAVIOUR.md 5).
OUTCOME_FIELDS = {"repository", "name", "commit_before", "commit_after", "files_added", "files_changed",
                  "files_removed", "rulesets_created", "revisions_created", "invalid_revisions", "rule_files",
                  "skipped_files", "unchanged", "duration_ms", "error"}
OUTCOME_COUNTS = ("files_added", "files_changed", "files_removed", "rulesets_created", "revisions_created",
                  "invalid_revisions", "rule_files", "skipped_files", "duration_ms")
FILE_FIELDS = {"path", "blob_sha", "ruleset", "state", "reason"}
FILE_STATES = {"imported", "available", "index", "skipped", "removed_upstream"}
GIT_ID = re.compile(r"^[0-9a-f]{40}$")
# The servers' git timeouts (conftest sets them): a stalled upstream fails a fetch after this long.
FETCH_TIMEOUT_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 5
# The update job's server has a short job lease, which one stalled run must renew (BEHAVIOUR.md 5).
JOB_LEASE_SECONDS = 2
# The capped server's match cap (BEHAVIOUR.md 4): a ruleset that matches more samples is capped.
MATCH_CAP = 2
# A rule file that every upstream repository of `Upstreams.new` carries, so imports have something to import.
FIXTURE_RULE_PATH = "rules/sdk_fixture.yara"
FIXTURE_RULE = 'rule sdk_fixture_rule {\n    strings:\n        $a = "ruleyard-sdk-fixture"\n    condition:\n        $a\n}\n'
# BEHAVIOUR.md 4: an activation follows a write "within a second or two"; some slack for slow machines.
ACTIVATION_TIMEOUT_SECONDS = 5
POLL_INTERVAL_SECONDS = 0.05
# Two rules; the second does not compile (unknown identifier), so the first error is on line 2.
INVALID_RULESET = "rule ok { condition: true }\nrule bad { condition: nope }\n"


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


# --- imports (ext) -------------------------------------------------------------------------------

def check_outcome(outcome: dict, repository_id: int) -> dict:
    """Checks the shape of one repository's outcome (of a run or an import) and returns it."""
    assert OUTCOME_FIELDS <= outcome.keys(), f"outcome lacks fields {OUTCOME_FIELDS - outcome.keys()}: {outcome}"
    assert outcome["repository"] == repository_id, f"outcome of another repository: {outcome}"
    assert isinstance(outcome["name"], str) and outcome["name"], outcome
    for key in OUTCOME_COUNTS:
        assert isinstance(outcome[key], int) and not isinstance(outcome[key], bool) and outcome[key] >= 0, \
            f"{key} is not a count: {outcome}"
    assert isinstance(outcome["unchanged"], bool), outcome
    for key in ("commit_before", "commit_after"):
        assert outcome[key] is None or GIT_ID.match(outcome[key]), f"{key} is not a commit id: {outcome}"
    assert outcome["error"] is None or (isinstance(outcome["error"], str) and outcome["error"].strip()), outcome
    return outcome


def counts(outcome: dict, *keys: str) -> dict:
    """The outcome's values for `keys`, to compare several counts in one assertion."""
    return {key: outcome[key] for key in keys}


def import_response(appliance: "Appliance", repository_id: int, body: dict | None = None,
                    as_user: str = "alice") -> requests.Response:
    """Ruleyard's `POST /api/yara/repositories/{id}/import/` with a JSON body (`{}`: every file)."""
    return appliance.post(f"/api/yara/repositories/{repository_id}/import/", as_user=as_user,
                          json={} if body is None else body)


def import_repository(appliance: "Appliance", repository_id: int, body: dict | None = None,
                      as_user: str = "alice") -> dict:
    """Imports through Ruleyard's own endpoint; checks the 200 answer and returns the outcome."""
    response = import_response(appliance, repository_id, body, as_user)
    outcome = check_outcome(expect_status(response, 200), repository_id)
    assert outcome["error"] is None, describe(response)
    assert outcome["commit_after"] is not None, f"an import reads a commit: {describe(response)}"
    return outcome


def repository_files(appliance: "Appliance", repository_id: int) -> dict[str, dict]:
    """Ruleyard's `GET /api/yara/repositories/{id}/files/`, every page, as a dict by path."""
    items, page = [], 1
    while True:
        response = appliance.get(f"/api/yara/repositories/{repository_id}/files/",
                                 params={"page": page, "page_size": 1000})
        body = expect_status(response, 200)
        items.extend(body["results"])
        if not body["next"]:
            assert len(items) == body["count"], f"count {body['count']} but {len(items)} files listed"
            break
        page += 1
    for item in items:
        assert FILE_FIELDS <= item.keys(), f"file lacks fields {FILE_FIELDS - item.keys()}: {item}"
        assert item["state"] in FILE_STATES, f"unknown file state: {item}"
        assert GIT_ID.match(item["blob_sha"] or ""), f"blob_sha is not a git object id: {item}"
        if item["state"] == "imported":
            assert isinstance(item["ruleset"], str) and item["ruleset"], f"an imported file names its ruleset: {item}"
        elif item["state"] != "removed_upstream":
            assert item["ruleset"] is None, f"a file that is not imported has no ruleset: {item}"
    by_path = {item["path"]: item for item in items}
    assert len(by_path) == len(items), f"a file is listed twice: {items}"
    return by_path


def repository_rulesets(client: A1000, repository_id: int) -> dict[str, dict]:
    """The rulesets the v2 list shows as coming from the repository, by name."""
    return {name: item for name, item in list_rulesets(client, "all").items()
            if item["repository"] == repository_id}


# --- rulesets ------------------------------------------------------------------------------------

@dataclass
class Appliance:
    """One running server with SDK clients and plain HTTP sessions (for Ruleyard's own endpoints) for
    the users admin (superuser), alice and bob."""
    server: "Server"  # conftest.Server
    clients: dict[str, A1000]
    sessions: dict[str, requests.Session]

    @property
    def yara_sync(self) -> bool:
        return self.server.yara_sync

    @property
    def admin(self) -> A1000:
        return self.clients["admin"]

    @property
    def alice(self) -> A1000:
        return self.clients["alice"]

    @property
    def bob(self) -> A1000:
        return self.clients["bob"]

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"

    def get(self, path: str, as_user: str = "alice", **kwargs) -> requests.Response:
        return self.sessions[as_user].get(self.url(path), timeout=30, **kwargs)

    def post(self, path: str, as_user: str = "alice", **kwargs) -> requests.Response:
        return self.sessions[as_user].post(self.url(path), timeout=30, **kwargs)

    def detail(self, name: str) -> dict:
        """Ruleyard's `GET /api/yara/ruleset/{name}/`."""
        return expect_status(self.get(f"/api/yara/ruleset/{name}/"), 200)

    def revisions(self, name: str) -> list[dict]:
        """Ruleyard's `GET /api/yara/ruleset/{name}/revisions/`, every page, newest first."""
        items, page = [], 1
        while True:
            body = expect_status(self.get(f"/api/yara/ruleset/{name}/revisions/",
                                          params={"page": page, "page_size": 1000}), 200)
            items.extend(body["results"])
            if not body["next"]:
                return items
            page += 1

    def rollback(self, name: str, revision: int, as_user: str = "alice") -> requests.Response:
        """Ruleyard's `POST /api/yara/publish/{name}/?revision=N`."""
        return self.post(f"/api/yara/publish/{name}/", as_user=as_user, params={"revision": revision})

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


def rule_text(rules: int = 1, marker: str | None = None) -> str:
    """A valid ruleset of `rules` rules whose text is unique to this call."""
    marker = marker or uuid.uuid4().hex
    return "".join(
        f'rule r{index}_{marker[:12]} {{\n    strings:\n        $a = "ruleyard-{marker}-{index}"\n'
        f"    condition:\n        $a\n}}\n"
        for index in range(rules)
    )


def check_diagnostics(diagnostics: list) -> None:
    assert isinstance(diagnostics, list), f"diagnostics is not a list: {diagnostics!r}"
    for diagnostic in diagnostics:
        assert DIAGNOSTIC_FIELDS <= diagnostic.keys(), f"diagnostic lacks fields: {diagnostic}"
        assert isinstance(diagnostic["message"], str) and diagnostic["message"], diagnostic
        assert isinstance(diagnostic["code"], str) and diagnostic["code"], diagnostic


def errors_of(diagnostics: list) -> list[dict]:
    return [diagnostic for diagnostic in diagnostics if diagnostic["severity"] == "error"]


def save_ruleset(client: A1000, name: str, content: str, status: int = 201, publish: bool | None = None) -> dict:
    """Creates (201) or updates (200) a ruleset through the SDK, checks the answer's shape and returns
    its `detail`."""
    response = client.create_or_update_yara_ruleset(name, content, publish=publish)
    body = expect_status(response, status)
    assert body.get("code") == status, describe(response)
    detail = body.get("detail")
    assert isinstance(detail, dict), describe(response)
    assert {"name", "revision", "valid", "diagnostics"} <= detail.keys(), describe(response)
    assert detail["name"] == name, describe(response)
    assert isinstance(detail["revision"], int) and detail["revision"] >= 1, describe(response)
    assert isinstance(detail["valid"], bool), describe(response)
    check_diagnostics(detail["diagnostics"])
    assert detail["valid"] == (not errors_of(detail["diagnostics"])), \
        f"valid disagrees with the error diagnostics: {describe(response)}"
    return detail


def create_ruleset(client: A1000, name: str | None = None, content: str | None = None,
                   publish: bool | None = None) -> str:
    """Creates a new ruleset (valid unless `content` says otherwise) and returns its name."""
    name = name or unique("rs")
    detail = save_ruleset(client, name, content or rule_text(), 201, publish)
    assert detail["revision"] == 1, detail
    return name


def list_rulesets_response(client: A1000, owner_type: str | None = None, status: str | None = None,
                           source: str | None = None) -> dict:
    """The unpaged v2 list: checks the envelope, the echoed filters and every item's fields."""
    response = client.get_yara_rulesets_on_the_appliance_v2(owner_type=owner_type, status=status, source=source)
    body = expect_status(response, 200)
    assert {"count", "next", "previous", "results", "type", "status", "source"} <= body.keys(), describe(response)
    assert (body["type"], body["status"], body["source"]) == \
        (owner_type or "my", status or "all", source or "all"), f"filters not echoed: {describe(response)}"
    assert body["next"] is None and body["previous"] is None, f"unpaged list has links: {describe(response)}"
    assert body["count"] == len(body["results"]), f"count disagrees with results: {describe(response)}"
    for item in body["results"]:
        assert RULESET_FIELDS <= item.keys(), f"item lacks fields {RULESET_FIELDS - item.keys()}: {item}"
    names = [item["name"] for item in body["results"]]
    assert len(names) == len(set(names)), f"a ruleset is listed twice: {describe(response)}"
    return body


def list_rulesets(client: A1000, owner_type: str | None = None, status: str | None = None,
                  source: str | None = None) -> dict[str, dict]:
    """The unpaged v2 list as a dict by name."""
    body = list_rulesets_response(client, owner_type, status, source)
    return {item["name"]: item for item in body["results"]}


def find_ruleset(client: A1000, name: str) -> dict | None:
    return list_rulesets(client, "all").get(name)


def wait_for_ruleset(client: A1000, name: str, status: str, timeout: float = ACTIVATION_TIMEOUT_SECONDS,
                     **fields) -> dict:
    """Polls the v2 list until `name` has `status` (and the given field values); returns the item."""
    started = time.monotonic()
    while True:
        item = find_ruleset(client, name)
        if item is not None and item["status"] == status and all(item[k] == v for k, v in fields.items()):
            return item
        if time.monotonic() - started > timeout:
            pytest.fail(f"ruleset {name} did not reach status {status!r} with {fields} "
                        f"within {timeout}s; last listed as {item}")
        time.sleep(POLL_INTERVAL_SECONDS)
