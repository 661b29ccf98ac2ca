"""The YARA repository methods of ReversingLabs.SDK.a1000.A1000 against a real Ruleyard server, and
Ruleyard's own import endpoint and file index (ext).

Contract: API.md sections 1, 2 and 9; BEHAVIOUR.md section 2 for imports. Every test makes its own
names and upstreams, so the tests do not depend on each other or on their order; listings are checked
relative to what a test made. Update runs are tested in test_update_job.py, on a server of their own.
"""

import math
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from ReversingLabs.SDK.helper import BadRequestError, ForbiddenError, NotFoundError

from support import (FIXTURE_RULE_PATH, MASKED_TOKEN, REPOSITORY_FIELDS, SYSTEM_REPOSITORY_URL, check_diagnostics,
                     check_outcome, counts, create_repository, create_ruleset, describe, errors_of, expect_error,
                     expect_error_response, expect_status, find_repository, import_repository, import_response,
                     list_repositories, list_rulesets, parse_timestamp, repository_files, repository_rulesets,
                     rule_text, save_ruleset, unique, wait_for_ruleset)


def system_repository(client) -> dict:
    items = [item for item in list_repositories(client, "system") if item["url"] == SYSTEM_REPOSITORY_URL]
    assert len(items) == 1, f"expected the ReversingLabs system repository once, found {items}"
    return items[0]


# --- listing -------------------------------------------------------------------------------------

def test_system_repository_is_configured_by_default(alice):
    item = system_repository(alice)
    assert REPOSITORY_FIELDS <= item.keys()
    assert item["source_branch"] == "develop"
    assert item["source_type"] == 1  # GitHub
    assert item["is_custom"] is False
    assert item["user"] is None
    assert item["api_token"] == ""
    assert item["import_update_preferences"] == 0


def test_listed_item_has_every_field(alice, upstreams):
    url, name, token = upstreams.new(), unique("fields"), unique("secret-token")
    before = datetime.now(timezone.utc)
    repository_id = create_repository(alice, url, name, "main", token, 2)

    response = alice.get_yara_repositories(page_size=1000)
    expect_status(response, 200)
    assert token not in response.text, "the access token leaked into the listing"
    item = find_repository(alice, repository_id)
    assert item is not None, f"repository {repository_id} is not listed"
    assert REPOSITORY_FIELDS <= item.keys()
    assert item["id"] == repository_id
    assert item["url"] == url
    assert item["name"] == name
    assert item["source_branch"] == "main"
    assert item["source_type"] == 4  # file://
    assert item["api_token"] == MASKED_TOKEN
    assert item["import_update_preferences"] == 2
    assert item["is_custom"] is True
    assert isinstance(item["user"], int)
    modified = parse_timestamp(item["last_modified"])
    assert before - timedelta(minutes=5) <= modified <= datetime.now(timezone.utc) + timedelta(minutes=5)


def test_api_token_is_empty_when_unset(alice, upstreams):
    repository_id = create_repository(alice, upstreams.new())
    assert find_repository(alice, repository_id)["api_token"] == ""


def test_user_field_is_the_owner(admin, alice, bob, upstreams):
    alice_first = find_repository(alice, create_repository(alice, upstreams.new()))
    alice_second = find_repository(alice, create_repository(alice, upstreams.new()))
    bobs = find_repository(alice, create_repository(bob, upstreams.new()))
    admins = find_repository(alice, create_repository(admin, upstreams.new()))
    assert alice_first["user"] == alice_second["user"]
    assert len({alice_first["user"], bobs["user"], admins["user"]}) == 3


def test_active_filter_selects_custom_or_system(alice, bob, upstreams):
    alices = create_repository(alice, upstreams.new())
    bobs = create_repository(bob, upstreams.new())
    system = system_repository(alice)

    everything = {item["id"]: item for item in list_repositories(alice, "all")}
    custom = {item["id"]: item for item in list_repositories(alice, "user")}
    systems = {item["id"]: item for item in list_repositories(alice, "system")}

    assert {alices, bobs, system["id"]} <= everything.keys()
    assert {alices, bobs} <= custom.keys(), "active_filter=user lists every custom repository"
    assert all(item["is_custom"] for item in custom.values())
    assert system["id"] in systems
    assert not {alices, bobs} & systems.keys()
    assert not any(item["is_custom"] for item in systems.values())
    assert everything.keys() == custom.keys() | systems.keys()
    assert {item["id"] for item in list_repositories(alice)} == everything.keys(), "no filter means all"


def test_unknown_active_filter_is_400(alice):
    expect_error(BadRequestError, alice.get_yara_repositories, active_filter="bogus")


def test_pages_follow_each_other(server, alice, upstreams):
    for _ in range(7):
        create_repository(alice, upstreams.new())
    expected = [item["id"] for item in list_repositories(alice, "user")]
    page_size = 3
    pages = math.ceil(len(expected) / page_size)
    assert pages >= 3

    seen = []
    for number in range(1, pages + 1):
        body = expect_status(alice.get_yara_repositories(active_filter="user", page_size=page_size,
                                                         page_number=number), 200)
        assert body["count"] == len(expected)
        assert len(body["results"]) == (page_size if number < pages else len(expected) - page_size * (pages - 1))
        seen.extend(item["id"] for item in body["results"])

        if number < pages:
            link = urlsplit(body["next"])
            assert f"{link.scheme}://{link.netloc}" == server.base_url, f"next is not absolute: {body['next']}"
            assert link.path.rstrip("/") == "/api/yara/repositories"
            query = parse_qs(link.query)
            assert query.get("page") == [str(number + 1)]
            assert query.get("page_size") == [str(page_size)]
            assert query.get("active_filter") == ["user"]
        else:
            assert body["next"] is None
        if number == 1:
            assert body["previous"] is None
        else:
            query = parse_qs(urlsplit(body["previous"]).query)
            assert query.get("page", ["1"]) == [str(number - 1)]

    assert len(seen) == len(set(seen)), "a repository appeared on two pages"
    assert sorted(seen) == sorted(expected)

    expect_error(NotFoundError, alice.get_yara_repositories, active_filter="user", page_size=page_size,
                 page_number=pages + 1)


def test_without_page_returns_the_first_page(alice, upstreams):
    create_repository(alice, upstreams.new())
    body = expect_status(alice.get_yara_repositories(), 200)
    assert body["previous"] is None
    assert len(body["results"]) == min(body["count"], 100)


def test_page_size_over_the_cap_is_capped(alice, upstreams):
    create_repository(alice, upstreams.new())
    body = expect_status(alice.get_yara_repositories(page_size=5000), 200)
    assert len(body["results"]) == min(body["count"], 1000)


@pytest.mark.parametrize("params", [
    {"page_number": 0}, {"page_number": -1}, {"page_number": "abc"},
    {"page_size": 0}, {"page_size": "abc"},
], ids=lambda params: "-".join(f"{key}={value}" for key, value in params.items()))
def test_bad_paging_parameters_are_400(alice, params):
    expect_error(BadRequestError, alice.get_yara_repositories, **params)


def test_aggregated_joins_every_page(alice, upstreams):
    for _ in range(5):
        create_repository(alice, upstreams.new())
    expected = {item["id"] for item in list_repositories(alice, "user")}

    # The SDK appends each page's results as one list: it returns a list of pages.
    pages = alice.get_yara_repositories_aggregated(active_filter="user", page_size=2)
    assert len(pages) == math.ceil(len(expected) / 2)
    items = [item for page in pages for item in page]
    assert len(items) == len(expected)
    assert {item["id"] for item in items} == expected
    assert all(item["is_custom"] for item in items), "next must keep active_filter"


# --- create --------------------------------------------------------------------------------------

def test_create_answers_201_with_message_and_id(alice, upstreams):
    url, name = upstreams.new(), unique("created")
    response = alice.create_yara_repository(url, name, "main", "", 1)
    body = expect_status(response, 201)
    assert body["message"] == "Repository created."
    item = find_repository(alice, body["id"])
    assert (item["url"], item["name"], item["import_update_preferences"]) == (url, name, 1)


def test_create_with_a_given_branch_uses_it(alice, upstreams):
    repository_id = create_repository(alice, upstreams.new("main"), source_branch="feature")
    assert find_repository(alice, repository_id)["source_branch"] == "feature"


@pytest.mark.parametrize(("kind", "branch"), [("main", "main"), ("develop", "develop"), ("unborn-head", "master")])
def test_create_without_branch_resolves_the_default_branch(alice, upstreams, kind, branch):
    repository_id = create_repository(alice, upstreams.new(kind), source_branch="")
    assert find_repository(alice, repository_id)["source_branch"] == branch


def test_create_with_a_missing_branch_fails_the_connection_test(alice, upstreams):
    name = unique("no-branch")
    body = expect_error(NotFoundError, alice.create_yara_repository, upstreams.new(), name, "no-such-branch", "", 0)
    assert "branch" in body["message"].lower()
    assert name not in {item["name"] for item in list_repositories(alice)}


def test_create_with_an_unreachable_url_fails_the_connection_test(alice):
    name, token = unique("unreachable"), unique("secret-token")
    response = expect_error_response(NotFoundError, alice.create_yara_repository, "file:///nonexistent/x.git",
                                     name, "", token, 0)
    assert token not in response.text, "the access token leaked into the error"
    assert name not in {item["name"] for item in list_repositories(alice)}


def test_create_with_credentials_in_the_url_is_400(alice):
    secret = unique("password")
    url = f"https://user:{secret}@example.invalid/x.git"
    response = expect_error_response(BadRequestError, alice.create_yara_repository, url, unique("credentials"),
                                     "", "", 0)
    assert "url" in response.json().get("errors", {}), describe(response)
    assert secret not in response.text, "the password in the URL was echoed"


@pytest.mark.parametrize("url", ["not a url", "ftp://example.invalid/x.git", ""])
def test_create_with_an_invalid_url_is_400(alice, url):
    body = expect_error(BadRequestError, alice.create_yara_repository, url, unique("bad-url"), "", "", 0)
    assert "url" in body.get("errors", {}), f"errors should name the field: {body}"


def test_create_with_a_duplicate_name_is_400(alice, bob, upstreams):
    name = unique("duplicate")
    create_repository(alice, upstreams.new(), name)
    body = expect_error(BadRequestError, bob.create_yara_repository, upstreams.new(), name, "", "", 0)
    assert "name" in body.get("errors", {}), f"errors should name the field: {body}"
    assert [item["name"] for item in list_repositories(alice)].count(name) == 1


def test_create_with_the_same_url_and_branch_twice_is_400(alice, upstreams):
    url = upstreams.new()
    create_repository(alice, url, source_branch="main")
    expect_error(BadRequestError, alice.create_yara_repository, url, unique("same-url"), "main", "", 0)
    create_repository(alice, url, source_branch="feature")  # another branch of the same URL is fine


@pytest.mark.parametrize("name", ["", "x" * 129], ids=["empty", "129-chars"])
def test_create_with_a_bad_name_is_400(alice, upstreams, name):
    body = expect_error(BadRequestError, alice.create_yara_repository, upstreams.new(), name, "", "", 0)
    assert "name" in body.get("errors", {}), f"errors should name the field: {body}"


def test_create_accepts_a_128_character_name(alice, upstreams):
    name = unique("long").ljust(128, "x")
    assert find_repository(alice, create_repository(alice, upstreams.new(), name))["name"] == name


@pytest.mark.parametrize("preference", [-1, 3])
def test_create_with_a_bad_import_preference_is_400(alice, upstreams, preference):
    body = expect_error(BadRequestError, alice.create_yara_repository, upstreams.new(), unique("pref"), "", "",
                        preference)
    assert "import_update_preferences" in body.get("errors", {}), f"errors should name the field: {body}"


# --- update --------------------------------------------------------------------------------------

def test_owner_updates_every_field(alice, upstreams):
    repository_id = create_repository(alice, upstreams.new(), source_branch="main")
    before = find_repository(alice, repository_id)
    url, name = upstreams.new("develop"), unique("renamed")

    response = alice.update_yara_repository(repository_id, url, name, "", "", 2)
    assert expect_status(response, 200)["message"] == "Repository updated.", describe(response)

    after = find_repository(alice, repository_id)
    assert (after["url"], after["name"], after["source_branch"], after["import_update_preferences"]) == \
        (url, name, "develop", 2)
    assert (after["user"], after["is_custom"], after["source_type"]) == (before["user"], True, 4)
    assert parse_timestamp(after["last_modified"]) >= parse_timestamp(before["last_modified"])


def test_update_masked_token_keeps_it_and_empty_token_clears_it(alice, upstreams):
    url, name, token = upstreams.new(), unique("token"), unique("secret-token")
    repository_id = create_repository(alice, url, name, "main", token)

    response = alice.update_yara_repository(repository_id, url, name, "main", MASKED_TOKEN, 1)
    expect_status(response, 200)
    assert token not in response.text
    item = find_repository(alice, repository_id)
    assert (item["api_token"], item["import_update_preferences"]) == (MASKED_TOKEN, 1)

    expect_status(alice.update_yara_repository(repository_id, url, name, "main", "", 1), 200)
    assert find_repository(alice, repository_id)["api_token"] == ""


def test_update_of_an_unknown_id_is_404(alice, upstreams):
    expect_error(NotFoundError, alice.update_yara_repository, 2_000_000_000, upstreams.new(), unique("ghost"),
                 "", "", 0)


def test_update_with_an_unreachable_url_is_404_and_changes_nothing(alice, upstreams):
    repository_id = create_repository(alice, upstreams.new())
    before = find_repository(alice, repository_id)
    expect_error(NotFoundError, alice.update_yara_repository, repository_id, "file:///nonexistent/x.git",
                 unique("moved"), "", "", 0)
    assert find_repository(alice, repository_id) == before


def test_update_with_credentials_in_the_url_is_400(alice, upstreams):
    repository_id = create_repository(alice, upstreams.new())
    before = find_repository(alice, repository_id)
    expect_error(BadRequestError, alice.update_yara_repository, repository_id,
                 "https://user:password@example.invalid/x.git", before["name"], "", "", 0)
    assert find_repository(alice, repository_id) == before


def test_update_to_another_repositorys_name_is_400(alice, upstreams):
    taken = unique("taken")
    create_repository(alice, upstreams.new(), taken)
    url = upstreams.new()
    repository_id = create_repository(alice, url)
    expect_error(BadRequestError, alice.update_yara_repository, repository_id, url, taken, "", "", 0)


def test_regular_user_cannot_update_another_users_repository(alice, bob, upstreams):
    url = upstreams.new()
    repository_id = create_repository(bob, url)
    before = find_repository(bob, repository_id)
    expect_error(ForbiddenError, alice.update_yara_repository, repository_id, url, unique("hijack"), "", "", 0)
    assert find_repository(bob, repository_id) == before


def test_superuser_updates_another_users_repository(admin, bob, upstreams):
    url = upstreams.new()
    repository_id = create_repository(bob, url)
    owner = find_repository(bob, repository_id)["user"]
    name = unique("by-admin")
    expect_status(admin.update_yara_repository(repository_id, url, name, "feature", "", 1), 200)
    item = find_repository(bob, repository_id)
    assert (item["name"], item["source_branch"], item["user"]) == (name, "feature", owner)


def test_regular_user_cannot_update_the_system_repository(alice):
    system = system_repository(alice)
    expect_error(ForbiddenError, alice.update_yara_repository, system["id"], system["url"], system["name"],
                 system["source_branch"], "", 0)
    assert system_repository(alice) == system


# --- delete --------------------------------------------------------------------------------------

@pytest.mark.parametrize("remove_rulesets", [False, True])
def test_owner_deletes_a_repository(alice, upstreams, remove_rulesets):
    repository_id = create_repository(alice, upstreams.new())
    response = alice.delete_yara_repository(repository_id, remove_rulesets=remove_rulesets)
    assert expect_status(response, 200)["message"] == "Repository deleted."
    assert find_repository(alice, repository_id) is None
    expect_error(NotFoundError, alice.delete_yara_repository, repository_id)


def test_regular_user_cannot_delete_another_users_repository(alice, bob, upstreams):
    repository_id = create_repository(bob, upstreams.new())
    expect_error(BadRequestError, alice.delete_yara_repository, repository_id)
    assert find_repository(bob, repository_id) is not None


def test_superuser_deletes_another_users_repository(admin, bob, upstreams):
    repository_id = create_repository(bob, upstreams.new())
    assert expect_status(admin.delete_yara_repository(repository_id), 200)["message"] == "Repository deleted."
    assert find_repository(bob, repository_id) is None


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_nobody_deletes_the_system_repository(alice, admin, who):
    client = {"alice": alice, "admin": admin}[who]
    system = system_repository(client)
    expect_error(BadRequestError, client.delete_yara_repository, system["id"], remove_rulesets=True)
    assert system_repository(client) == system


def test_delete_of_an_unknown_id_is_404(alice):
    expect_error(NotFoundError, alice.delete_yara_repository, 2_000_000_000)


def imported_rulesets(appliance, repository_id: int) -> list[str]:
    """Imports the repository through Ruleyard's own import endpoint; returns its rulesets' names."""
    import_repository(appliance, repository_id)
    names = list(repository_rulesets(appliance.alice, repository_id))
    assert len(names) == 1, f"the upstream has one rule file, so one ruleset; got {names}"
    wait_for_ruleset(appliance.alice, names[0], "active")
    return names


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_delete_keeps_rulesets_as_local_rulesets_of_the_owner(sync_off, upstreams, who):
    repository_id = create_repository(sync_off.alice, upstreams.new())
    names = imported_rulesets(sync_off, repository_id)

    expect_status(sync_off.clients[who].delete_yara_repository(repository_id, remove_rulesets=False), 200)

    remaining = {name: item for name, item in list_rulesets(sync_off.alice, "all").items() if name in names}
    assert remaining.keys() == set(names), "rulesets must stay when shouldRemoveRulesets is false"
    for item in remaining.values():
        assert item["owner"] == "alice", f"a kept ruleset belongs to the repository's owner: {item}"
        assert item["repository"] is None, f"a kept ruleset becomes local: {item}"
        assert item["status"] == "active", f"a kept ruleset stays active: {item}"
    # A local ruleset of hers: she updates it like any upload.
    assert save_ruleset(sync_off.alice, names[0], rule_text(), 200)["revision"] == 2


def test_delete_with_remove_rulesets_removes_them(sync_off, upstreams):
    repository_id = create_repository(sync_off.alice, upstreams.new())
    names = imported_rulesets(sync_off, repository_id)

    expect_status(sync_off.alice.delete_yara_repository(repository_id, remove_rulesets=True), 200)

    assert not list_rulesets(sync_off.alice, "all").keys() & set(names)
    expect_error(NotFoundError, sync_off.alice.get_yara_ruleset_contents, names[0])


# --- import (ext) --------------------------------------------------------------------------------

def marker() -> str:
    return uuid.uuid4().hex[:10]


def test_import_of_every_file_answers_with_the_outcome(sync_off, upstreams):
    tag = marker()
    one, two = f"rules/{tag}_one.yara", f"rules/{tag}_two.yar"
    url = upstreams.create({one: rule_text(), two: rule_text(rules=2), "README.md": "Rules.\n"})
    name = unique("import")
    repository_id = create_repository(sync_off.alice, url, name)

    outcome = import_repository(sync_off, repository_id)
    assert (outcome["name"], outcome["commit_before"]) == (name, None), outcome
    assert counts(outcome, "files_added", "files_changed", "files_removed", "rule_files", "skipped_files",
                  "rulesets_created", "revisions_created", "invalid_revisions") == \
        {"files_added": 2, "files_changed": 0, "files_removed": 0, "rule_files": 2, "skipped_files": 0,
         "rulesets_created": 2, "revisions_created": 2, "invalid_revisions": 0}, outcome

    rulesets = repository_rulesets(sync_off.alice, repository_id)
    names = {item["source_path"]: ruleset for ruleset, item in rulesets.items()}
    assert names == {one: f"{tag}_one", two: f"{tag}_two"}, f"a ruleset is named after its file's stem: {rulesets}"
    assert all(item["owner"] == "alice" for item in rulesets.values()), rulesets
    files = repository_files(sync_off, repository_id)
    assert files.keys() == {one, two}, f"only rule files are listed: {files}"
    for path, item in files.items():
        assert (item["state"], item["ruleset"], item["reason"]) == ("imported", names[path], None), item
    wait_for_ruleset(sync_off.alice, names[one], "active", revision=1, rule_count=1)
    wait_for_ruleset(sync_off.alice, names[two], "active", revision=1, rule_count=2)

    # Nothing changed upstream: the same commit, no ruleset and no revision.
    again = import_repository(sync_off, repository_id)
    assert again["commit_before"] == again["commit_after"] == outcome["commit_after"], again
    assert counts(again, "files_added", "files_changed", "rulesets_created", "revisions_created") == \
        {"files_added": 0, "files_changed": 0, "rulesets_created": 0, "revisions_created": 0}, again
    assert repository_rulesets(sync_off.alice, repository_id).keys() == rulesets.keys()
    assert [item["revision"] for item in sync_off.revisions(names[one])] == [1]


# API.md 1.2: every body is accepted as JSON, form data or multipart form data.
PATHS_BODIES = {
    "json": lambda paths: {"json": {"paths": paths}},
    "form": lambda paths: {"data": {"paths": paths}},
    "multipart": lambda paths: {"files": [("paths", (None, path)) for path in paths]},
}


@pytest.mark.parametrize("encoding", PATHS_BODIES)
def test_import_of_given_paths_imports_only_them(sync_off, upstreams, encoding):
    tag = marker()
    one, two = f"rules/{tag}_one.yara", f"rules/{tag}_two.yara"
    repository_id = create_repository(sync_off.alice, upstreams.create({one: rule_text(), two: rule_text()}))

    response = sync_off.post(f"/api/yara/repositories/{repository_id}/import/", **PATHS_BODIES[encoding]([one]))
    outcome = check_outcome(expect_status(response, 200), repository_id)
    assert counts(outcome, "rulesets_created", "revisions_created", "error") == \
        {"rulesets_created": 1, "revisions_created": 1, "error": None}, describe(response)
    assert [item["source_path"] for item in repository_rulesets(sync_off.alice, repository_id).values()] == [one]
    files = repository_files(sync_off, repository_id)
    assert {path: item["state"] for path, item in files.items()} == {one: "imported", two: "available"}, files

    # Without paths: every file, so the rest.
    assert import_repository(sync_off, repository_id)["rulesets_created"] == 1
    files = repository_files(sync_off, repository_id)
    assert {path: item["state"] for path, item in files.items()} == {one: "imported", two: "imported"}, files


def test_import_without_a_body_imports_every_file(sync_off, upstreams):
    # As the SDK's action POSTs do: no body and no Content-Type.
    tag = marker()
    one, two = f"rules/{tag}_one.yara", f"rules/{tag}_two.yara"
    repository_id = create_repository(sync_off.alice, upstreams.create({one: rule_text(), two: rule_text()}))
    response = sync_off.post(f"/api/yara/repositories/{repository_id}/import/")
    assert check_outcome(expect_status(response, 200), repository_id)["rulesets_created"] == 2, describe(response)
    assert {item["source_path"] for item in repository_rulesets(sync_off.alice, repository_id).values()} == {one, two}


def test_import_of_a_path_not_in_the_repository_is_400(sync_off, upstreams):
    repository_id = create_repository(sync_off.alice, upstreams.new())
    response = import_response(sync_off, repository_id, {"paths": [FIXTURE_RULE_PATH, "rules/missing.yara"]})
    body = expect_status(response, 400)
    assert isinstance(body.get("code"), str) and body["code"], describe(response)
    assert "paths" in body.get("errors", {}), f"errors should name the field: {describe(response)}"
    assert repository_rulesets(sync_off.alice, repository_id) == {}, "a refused import imports nothing"


def test_regular_user_cannot_import_another_users_repository(sync_off, upstreams):
    repository_id = create_repository(sync_off.bob, upstreams.new())
    response = import_response(sync_off, repository_id, as_user="alice")
    body = expect_status(response, 403)
    assert isinstance(body.get("code"), str) and body["code"], describe(response)
    assert repository_rulesets(sync_off.bob, repository_id) == {}


def test_import_of_an_unknown_repository_is_404(sync_off):
    response = import_response(sync_off, 2_000_000_000)
    assert response.status_code == 404, describe(response)


def test_import_maps_rule_files_to_rulesets(sync_off, upstreams, tmp_path):
    """BEHAVIOUR.md 2: names, extensions, index files, includes from the same commit, skipped files."""
    tag = marker()
    outside = tmp_path / "outside.yara"  # valid: reading it from the server's disk would make a valid ruleset
    outside.write_text("rule outside_rule { condition: true }\n")
    paths = {
        "renamed": f"rules/{tag}.Ransom ware.YAR",
        "base": f"lib/{tag}_base.yara",
        "uses": f"rules/{tag}_uses.yara",
        "index": f"rules/{tag}_index.yara",
        "missing": f"rules/{tag}_missing.yara",
        "escape": f"rules/{tag}_escape.yara",
        "absolute": f"rules/{tag}_absolute.yara",
        "latin1": f"rules/{tag}_latin1.yara",
    }
    url = upstreams.create({
        paths["renamed"]: rule_text(),
        paths["base"]: f"rule base_{tag} {{\n    condition:\n        true\n}}\n",
        paths["uses"]: f'include "../lib/{tag}_base.yara"\n\nrule uses_{tag} {{\n    condition: base_{tag}\n}}\n',
        paths["index"]: f'// Every rule.\ninclude "{tag}_uses.yara"\ninclude "../lib/{tag}_base.yara"\n',
        paths["missing"]: 'include "nowhere.yara"\n\nrule missing_include { condition: true }\n',
        paths["escape"]: 'include "../../outside.yara"\n\nrule escaping_include { condition: outside_rule }\n',
        paths["absolute"]: f'include "{outside}"\n\nrule absolute_include {{ condition: outside_rule }}\n',
        paths["latin1"]: b'rule latin1 { strings: $a = "caf\xe9" condition: $a }\n',
        "README.md": "Not a rule file.\n",
        f"rules/{tag}_notes.txt": "rule not_a_rule_file { condition: true }\n",
    })
    repository_id = create_repository(sync_off.alice, url)

    outcome = import_repository(sync_off, repository_id)
    assert counts(outcome, "rulesets_created", "revisions_created", "invalid_revisions", "skipped_files") == \
        {"rulesets_created": 6, "revisions_created": 6, "invalid_revisions": 3, "skipped_files": 1}, outcome

    files = repository_files(sync_off, repository_id)
    assert files.keys() == set(paths.values()), f"only .yar and .yara files, in any case, are listed: {files}"
    states = {kind: files[path]["state"] for kind, path in paths.items()}
    assert states == {"renamed": "imported", "base": "imported", "uses": "imported", "index": "index",
                      "missing": "imported", "escape": "imported", "absolute": "imported", "latin1": "skipped"}
    assert isinstance(files[paths["latin1"]]["reason"], str) and files[paths["latin1"]]["reason"], files
    names = {item["source_path"]: name for name, item in repository_rulesets(sync_off.alice, repository_id).items()}
    assert names.keys() == {path for kind, path in paths.items() if states[kind] == "imported"}, names
    assert names[paths["renamed"]] == f"{tag}_Ransom_ware", "the stem, with characters outside [A-Za-z0-9_-] as _"
    assert names[paths["uses"]] == f"{tag}_uses"

    # An include is resolved from the same commit of the same repository.
    wait_for_ruleset(sync_off.alice, names[paths["base"]], "active")
    wait_for_ruleset(sync_off.alice, names[paths["uses"]], "active")
    # Nothing is read from outside the repository, the server's disk included.
    for kind in ("missing", "escape", "absolute"):
        name = names[paths[kind]]
        wait_for_ruleset(sync_off.alice, name, "invalid")
        diagnostics = sync_off.revisions(name)[0]["diagnostics"]
        check_diagnostics(diagnostics)
        assert errors_of(diagnostics), f"{kind}: an invalid revision has an error diagnostic: {diagnostics}"


def test_a_taken_name_is_prefixed_with_the_repository_name(sync_off, upstreams):
    tag = marker()
    stem = f"taken_{tag}"
    create_ruleset(sync_off.bob, stem)  # another origin already has the file's name
    first = create_repository(sync_off.alice, upstreams.create({f"{stem}.yara": rule_text()}), f"Acme rules {tag}")
    import_repository(sync_off, first)
    assert list(repository_rulesets(sync_off.alice, first)) == [f"Acme_rules_{tag}_{stem}"]

    # Another repository whose name sanitizes the same way: the prefixed name is taken too.
    second = create_repository(sync_off.alice, upstreams.create({f"rules/{stem}.yar": rule_text()}),
                               f"Acme.rules {tag}")
    import_repository(sync_off, second)
    assert list(repository_rulesets(sync_off.alice, second)) == [f"Acme_rules_{tag}_{stem}_2"]

    # The mapping from file to ruleset is stable: importing again changes no name.
    import_repository(sync_off, first)
    assert list(repository_rulesets(sync_off.alice, first)) == [f"Acme_rules_{tag}_{stem}"]
