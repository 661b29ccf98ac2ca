"""The YARA repository methods of ReversingLabs.SDK.a1000.A1000 against a real Ruleyard server.

Contract: API.md sections 1, 2 and 9. Every test makes its own names and upstreams, so the tests
do not depend on each other or on their order; listings are checked relative to what a test made.
"""

import math
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from ReversingLabs.SDK.helper import BadRequestError, ForbiddenError, NotFoundError

from support import (MASKED_TOKEN, REPOSITORY_FIELDS, SYSTEM_REPOSITORY_URL, create_repository, describe,
                     expect_error, expect_error_response, expect_status, find_repository, list_repositories,
                     parse_timestamp, unique)


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
