"""The YARA ruleset and publishing methods of ReversingLabs.SDK.a1000.A1000 against a real Ruleyard
server, with YARA Sync off (`sync_off`) and on (`sync_on`); tests that take `appliance` run against both.

Contract: API.md sections 4, 5 and 9; BEHAVIOUR.md sections 3 and 4. Every test makes its own
uniquely named rulesets and checks listings and publish reports only for those, so the tests do not
depend on each other or on their order although the servers are shared by the whole session.
Activation is asynchronous: tests poll for a status instead of sleeping.
"""

import math
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
from ReversingLabs.SDK.helper import BadRequestError, ForbiddenError, NotFoundError

from support import (INVALID_RULESET, check_diagnostics, create_ruleset, describe, errors_of, expect_error,
                     expect_status, find_ruleset, list_rulesets, list_rulesets_response, rule_text, save_ruleset,
                     unique, wait_for_ruleset)

OWNER_TYPES = ["my", "user", "system", "all"]
STATUSES = ["all", "active", "disabled", "pending", "invalid", "error", "capped"]
SOURCES = ["all", "local", "cloud"]


def content_of(client, name: str) -> str:
    response = client.get_yara_ruleset_contents(name)
    body = expect_status(response, 200)
    assert body.get("code") == 200, describe(response)
    assert body.get("detail", {}).get("name") == name, describe(response)
    return body["detail"]["content"]


def activate(appliance, name: str, revision: int) -> dict:
    """Makes `revision` (the latest) of `name` active: with YARA Sync on by publishing it, with it off by
    waiting for the automatic activation. Returns the listed item."""
    if appliance.yara_sync:
        publish(appliance.alice, name)
    return wait_for_ruleset(appliance.alice, name, "active", published_revision=revision, revision=revision)


def publish(client, name: str) -> None:
    response = client.publish_single_yara_ruleset(name)
    assert expect_status(response, 200) == {"message": f"Publishing {name} ruleset!"}, describe(response)


def publish_all(client) -> dict:
    response = client.publish_all_yara_rulesets()
    body = expect_status(response, 200)
    assert set(body) == {"error_messages", "successful_publish_count", "total_count"}, describe(response)
    assert isinstance(body["error_messages"], list), describe(response)
    for entry in body["error_messages"]:
        assert set(entry) == {"revision_id", "ruleset_name", "message"}, describe(response)
        assert isinstance(entry["revision_id"], int), describe(response)
        assert isinstance(entry["message"], str) and entry["message"], describe(response)
    for key in ("successful_publish_count", "total_count"):
        assert isinstance(body[key], int) and body[key] >= 0, describe(response)
    assert body["successful_publish_count"] + len(body["error_messages"]) == body["total_count"], describe(response)
    return body


def first_error(diagnostics: list) -> dict:
    errors = errors_of(diagnostics)
    assert errors, f"no error among the diagnostics: {diagnostics}"
    return errors[0]


def revision_numbers(appliance, name: str) -> list[int]:
    return [item["revision"] for item in appliance.revisions(name)]


# --- create and update ---------------------------------------------------------------------------

def test_create_answers_201_with_the_first_revision(appliance):
    name, content = unique("created"), rule_text(rules=2)
    response = appliance.alice.create_or_update_yara_ruleset(name, content)
    body = expect_status(response, 201)
    assert (body["code"], body["message"]) == (201, "Ruleset created."), describe(response)
    check_diagnostics(body["detail"]["diagnostics"])
    assert {key: body["detail"][key] for key in ("name", "revision", "valid", "diagnostics")} == \
        {"name": name, "revision": 1, "valid": True, "diagnostics": []}, describe(response)
    assert content_of(appliance.alice, name) == content
    item = find_ruleset(appliance.alice, name)
    assert (item["owner"], item["revision"], item["rule_count"]) == ("alice", 1, 2), item


def test_update_answers_200_with_the_next_revision(appliance):
    name = create_ruleset(appliance.alice)
    content = rule_text(rules=3)
    response = appliance.alice.create_or_update_yara_ruleset(name, content)
    body = expect_status(response, 200)
    assert (body["code"], body["message"]) == (200, "Ruleset updated."), describe(response)
    assert (body["detail"]["name"], body["detail"]["revision"], body["detail"]["valid"]) == (name, 2, True)
    assert content_of(appliance.alice, name) == content
    assert revision_numbers(appliance, name) == [2, 1], "revisions are listed newest first"
    item = find_ruleset(appliance.alice, name)
    assert (item["revision"], item["rule_count"]) == (2, 3), item


def test_same_content_as_the_latest_revision_creates_no_revision(appliance):
    first, second = rule_text(), rule_text()
    name = create_ruleset(appliance.alice, content=first)

    response = appliance.alice.create_or_update_yara_ruleset(name, first)
    body = expect_status(response, 200)
    assert body["code"] == 200, describe(response)
    assert "unchanged" in body["message"].lower(), describe(response)
    assert (body["detail"]["revision"], body["detail"]["valid"]) == (1, True), describe(response)
    assert revision_numbers(appliance, name) == [1]

    # Only the latest revision counts: going back to an older text is a new revision.
    assert save_ruleset(appliance.alice, name, second, 200)["revision"] == 2
    assert save_ruleset(appliance.alice, name, first, 200)["revision"] == 3
    assert revision_numbers(appliance, name) == [3, 2, 1]


def test_invalid_content_is_stored_with_its_diagnostics(appliance):
    name = unique("invalid")
    response = appliance.alice.create_or_update_yara_ruleset(name, INVALID_RULESET)
    assert expect_status(response, 201)["message"].startswith("Ruleset created."), describe(response)
    detail = response.json()["detail"]
    check_diagnostics(detail["diagnostics"])
    assert (detail["revision"], detail["valid"]) == (1, False), detail
    error = first_error(detail["diagnostics"])
    assert error["line"] == 2, f"the first error is on line 2: {detail['diagnostics']}"
    line = INVALID_RULESET.splitlines()[1]
    assert isinstance(error["column"], int) and 1 <= error["column"] <= len(line) + 1, error

    assert content_of(appliance.alice, name) == INVALID_RULESET
    # Enabled, never published, latest revision invalid: `invalid`, whatever the sync mode.
    item = wait_for_ruleset(appliance.alice, name, "invalid")
    assert (item["revision"], item["published_revision"]) == (1, None), item
    assert appliance.detail(name)["status"] == "invalid"

    # A valid revision on top is a candidate like any other: activated at once, or waiting for a publish.
    assert save_ruleset(appliance.alice, name, rule_text(), 200)["valid"] is True
    if appliance.yara_sync:
        assert wait_for_ruleset(appliance.alice, name, "pending")["published_revision"] is None
    activate(appliance, name, 2)


def test_invalid_update_keeps_the_published_revision_active(appliance):
    name = create_ruleset(appliance.alice)
    activate(appliance, name, 1)

    response = appliance.alice.create_or_update_yara_ruleset(name, INVALID_RULESET)
    assert expect_status(response, 200)["message"].startswith("Ruleset updated."), describe(response)
    detail = save_ruleset(appliance.alice, name, INVALID_RULESET, 200)  # unchanged now; checks the shape
    assert (detail["revision"], detail["valid"]) == (2, False), detail
    assert first_error(detail["diagnostics"])["line"] == 2

    item = wait_for_ruleset(appliance.alice, name, "active", revision=2)
    assert item["published_revision"] == 1, f"an invalid revision was published: {item}"
    if appliance.yara_sync:
        body = expect_error(BadRequestError, appliance.alice.publish_single_yara_ruleset, name)
        assert "line 2" in body["message"], f"the message should carry the first diagnostic: {body}"
        item = find_ruleset(appliance.alice, name)
        assert (item["status"], item["published_revision"]) == ("active", 1), item


BAD_NAMES = {
    "2-chars": lambda: "ab",
    "65-chars": lambda: unique("long").ljust(65, "x"),
    "space": lambda: unique("with space"),
    "dot": lambda: unique("with.dot"),
    "slash": lambda: unique("with/slash"),
    "non-ascii": lambda: unique("na\u00efve"),
    "reserved-all": lambda: "all",
    "reserved-ruleset": lambda: "ruleset",
}


@pytest.mark.parametrize("kind", BAD_NAMES)
def test_create_with_a_bad_name_is_400(sync_off, kind):
    name = BAD_NAMES[kind]()
    body = expect_error(BadRequestError, sync_off.alice.create_or_update_yara_ruleset, name, rule_text())
    assert "name" in body.get("errors", {}), f"errors should name the field: {body}"
    assert name not in list_rulesets(sync_off.admin, "all")


def test_create_without_a_name_is_400(sync_off):
    # The SDK leaves out a falsy name, so the form has no `name` field at all.
    body = expect_error(BadRequestError, sync_off.alice.create_or_update_yara_ruleset, "", rule_text())
    assert "name" in body.get("errors", {}), f"errors should name the field: {body}"


def test_names_of_3_and_64_characters_are_accepted(sync_off):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    shortest = "all"
    while shortest == "all":  # the only reserved 3-character name
        shortest = "".join(secrets.choice(alphabet) for _ in range(3))
    longest = unique("max").ljust(64, "_")
    for name in (shortest, longest):
        create_ruleset(sync_off.alice, name)
        assert find_ruleset(sync_off.alice, name)["name"] == name


def test_names_are_case_sensitive(sync_off):
    lower = unique("case")
    upper = lower.upper()
    lower_text, upper_text = rule_text(), rule_text()
    create_ruleset(sync_off.alice, lower, lower_text)
    create_ruleset(sync_off.alice, upper, upper_text)  # 201: another ruleset, not a revision of the first
    assert content_of(sync_off.alice, lower) == lower_text
    assert content_of(sync_off.alice, upper) == upper_text


def test_create_with_empty_content_is_400(sync_off):
    name = unique("empty")
    # The SDK leaves out falsy content, so the form has no `content` field at all.
    body = expect_error(BadRequestError, sync_off.alice.create_or_update_yara_ruleset, name, "")
    assert "content" in body.get("errors", {}), f"errors should name the field: {body}"
    assert find_ruleset(sync_off.alice, name) is None


def test_include_is_refused(sync_off):
    included = 'include "other.yar"\n' + rule_text()
    name = unique("include")
    body = expect_error(BadRequestError, sync_off.alice.create_or_update_yara_ruleset, name, included)
    assert body["code"] == "include_not_allowed", body
    assert find_ruleset(sync_off.alice, name) is None

    content = rule_text()
    name = create_ruleset(sync_off.alice, content=content)
    body = expect_error(BadRequestError, sync_off.alice.create_or_update_yara_ruleset, name, included)
    assert body["code"] == "include_not_allowed", body
    assert content_of(sync_off.alice, name) == content
    assert revision_numbers(sync_off, name) == [1]


def test_regular_user_cannot_write_another_users_ruleset(appliance):
    content = rule_text()
    name = create_ruleset(appliance.bob, content=content)
    expect_error(ForbiddenError, appliance.alice.create_or_update_yara_ruleset, name, rule_text())
    assert content_of(appliance.bob, name) == content
    assert revision_numbers(appliance, name) == [1]
    assert find_ruleset(appliance.bob, name)["owner"] == "bob"


def test_superuser_writes_another_users_ruleset(appliance):
    name = create_ruleset(appliance.bob)
    content = rule_text()
    assert save_ruleset(appliance.admin, name, content, 200)["revision"] == 2
    assert content_of(appliance.bob, name) == content
    assert find_ruleset(appliance.bob, name)["owner"] == "bob", "an update by a superuser keeps the owner"


# --- content -------------------------------------------------------------------------------------

def test_content_is_returned_exactly_as_sent(sync_off):
    # CRLF line endings, no final newline, non-ASCII text in a comment.
    content = "// Gr\u00fc\u00dfe \u2713\r\nrule crlf_rule {\r\n    condition:\r\n        true\r\n}"
    name = create_ruleset(sync_off.alice, content=content)
    assert content_of(sync_off.alice, name) == content


def test_any_user_reads_any_rulesets_content(appliance):
    content = rule_text()
    name = create_ruleset(appliance.alice, content=content)
    assert content_of(appliance.bob, name) == content
    assert content_of(appliance.admin, name) == content


def test_content_of_an_unknown_ruleset_is_404(appliance):
    content_of(appliance.alice, create_ruleset(appliance.alice))  # the endpoint itself is there
    expect_error(NotFoundError, appliance.alice.get_yara_ruleset_contents, unique("ghost"))


# --- listing -------------------------------------------------------------------------------------

def test_listed_item_has_every_field(appliance):
    name = create_ruleset(appliance.alice, content=rule_text(rules=3))
    if appliance.yara_sync:
        item = wait_for_ruleset(appliance.alice, name, "pending")
        assert item["published_revision"] is None, item
    item = activate(appliance, name, 1)
    assert item["owner"] == "alice"
    assert item["system_ruleset"] is False
    assert item["cloud_synced"] is False
    assert item["last_matched"] is None
    for key in ("malicious_match_count", "suspicious_match_count", "goodware_match_count", "unknown_match_count"):
        assert item[key] == 0, f"{key}: {item}"
    assert item["repository"] is None, "an API upload has no repository"
    assert item["source_path"] is None or isinstance(item["source_path"], str), item
    assert (item["revision"], item["published_revision"], item["rule_count"]) == (1, 1, 3), item

    detail = appliance.detail(name)
    assert (detail["name"], detail["status"], detail["published_revision"]) == (name, "active", 1), detail


def test_default_filters_are_my_all_all(appliance):
    mine = create_ruleset(appliance.alice)
    bobs = create_ruleset(appliance.bob)
    body = list_rulesets_response(appliance.alice)  # checks that the echo says my/all/all
    names = {item["name"] for item in body["results"]}
    assert mine in names and bobs not in names
    assert all(item["owner"] == "alice" for item in body["results"])
    assert names == set(list_rulesets(appliance.alice, "my", "all", "all"))


def test_owner_type_selects_whose_rulesets(appliance):
    alices, bobs, admins = (create_ruleset(client) for client in (appliance.alice, appliance.bob, appliance.admin))
    mine = list_rulesets(appliance.alice, "my")
    users = list_rulesets(appliance.alice, "user")
    systems = list_rulesets(appliance.alice, "system")
    everything = list_rulesets(appliance.alice, "all")

    assert alices in mine and not {bobs, admins} & mine.keys()
    assert all(item["owner"] == "alice" and not item["system_ruleset"] for item in mine.values())
    assert {alices, bobs, admins} <= users.keys(), "type=user lists every user's rulesets"
    assert (users[alices]["owner"], users[bobs]["owner"], users[admins]["owner"]) == ("alice", "bob", "admin")
    assert not any(item["system_ruleset"] for item in users.values())
    assert all(item["system_ruleset"] for item in systems.values())
    assert not systems, "no test imports the system repository, so there are no system rulesets"
    assert everything.keys() == users.keys() | systems.keys()
    assert mine.keys() <= users.keys()

    admin_mine = list_rulesets(appliance.admin, "my")
    assert admins in admin_mine and not {alices, bobs} & admin_mine.keys()
    bob_mine = list_rulesets(appliance.bob, "my")
    assert bobs in bob_mine and not {alices, admins} & bob_mine.keys()


def test_every_filter_combination_selects_what_it_says(appliance):
    """Lists with every owner_type x status x source, as alice, and checks each answer against
    rulesets in known states: alice's active, disabled and invalid ones (and, with YARA Sync on, a
    pending one), and one of bob's."""
    active = create_ruleset(appliance.alice)
    disabled = create_ruleset(appliance.alice)
    invalid = create_ruleset(appliance.alice, content=INVALID_RULESET)
    bobs = create_ruleset(appliance.bob)
    expect_status(appliance.alice.enable_or_disable_yara_ruleset(False, disabled), 200)
    expected = {active: "active", disabled: "disabled", invalid: "invalid"}
    owners = {active: "alice", disabled: "alice", invalid: "alice", bobs: "bob"}
    if appliance.yara_sync:
        pending = create_ruleset(appliance.alice)
        expected.update({pending: "pending", bobs: "pending"})
        owners[pending] = "alice"
    else:
        wait_for_ruleset(appliance.alice, bobs, "active")
        expected[bobs] = "active"
    activate(appliance, active, 1)
    for name, status in expected.items():
        wait_for_ruleset(appliance.alice, name, status)

    problems = []
    for owner_type in OWNER_TYPES:
        for status in STATUSES:
            for source in SOURCES:
                query = f"type={owner_type}&status={status}&source={source}"
                listed = list_rulesets(appliance.alice, owner_type, status, source)  # checks envelope and echo
                paged = expect_status(appliance.alice.get_yara_rulesets_on_the_appliance_v2(
                    owner_type=owner_type, status=status, source=source, page="1", page_size="1000"), 200)
                if (paged["type"], paged["status"], paged["source"]) != (owner_type, status, source):
                    problems.append(f"{query}&page=1&page_size=1000: echoes {paged['type']}, {paged['status']}, "
                                    f"{paged['source']}")
                paged_names = {item["name"] for item in paged["results"]}
                if (paged["count"], paged["next"], paged["previous"]) != (len(paged_names), None, None):
                    problems.append(f"{query}&page=1&page_size=1000: one page should hold everything: "
                                    f"count {paged['count']}, {len(paged_names)} results, next {paged['next']}, "
                                    f"previous {paged['previous']}")
                # Other tests' rulesets may change status meanwhile; who owns what may not.
                if status == "all" and paged_names != listed.keys():
                    problems.append(f"{query}: paged and unpaged lists differ: "
                                    f"{sorted(paged_names ^ listed.keys())}")
                for item in listed.values():
                    if status != "all" and item["status"] != status:
                        problems.append(f"{query}: lists {item['name']} with status {item['status']}")
                    if owner_type == "my" and item["owner"] != "alice":
                        problems.append(f"{query}: lists {item['name']} of {item['owner']}")
                    if owner_type == "user" and item["system_ruleset"]:
                        problems.append(f"{query}: lists system ruleset {item['name']}")
                    if owner_type == "system" and not item["system_ruleset"]:
                        problems.append(f"{query}: lists non-system ruleset {item['name']}")
                if source == "cloud" and listed:
                    problems.append(f"{query}: nothing comes from the cloud, yet it lists {sorted(listed)}")
                if status == "capped" and listed:
                    problems.append(f"{query}: nothing was scanned, so nothing is capped, yet it lists {sorted(listed)}")
                for name in expected:
                    if (name in listed) != (name in paged_names):
                        problems.append(f"{query}: {name} listed {'without' if name in listed else 'with'} "
                                        f"paging only")
                for name, name_status in expected.items():
                    wanted = (status in ("all", name_status)
                              and source != "cloud"
                              and (owner_type in ("user", "all") or (owner_type == "my" and owners[name] == "alice")))
                    if wanted != (name in listed):
                        problems.append(f"{query}: {name} ({owners[name]}, {name_status}) "
                                        f"{'missing' if wanted else 'listed'}")
    assert not problems, "\n".join(problems)


def test_without_page_every_ruleset_is_listed(sync_off):
    """Without `page` the v2 list is not cut at the default page size of 100 (API.md 1.4)."""
    for _ in range(101 - list_rulesets_response(sync_off.bob, "all")["count"]):
        create_ruleset(sync_off.bob)
    body = list_rulesets_response(sync_off.bob, "all")  # checks that count equals the number of results
    assert body["count"] > 100, f"only {body['count']} rulesets listed"


@pytest.mark.parametrize("params", [{"owner_type": "bogus"}, {"status": "bogus"}, {"source": "bogus"}],
                         ids=lambda params: "-".join(params))
def test_unknown_filter_value_is_400(sync_off, params):
    body = expect_error(BadRequestError, sync_off.alice.get_yara_rulesets_on_the_appliance_v2, **params)
    (argument,) = params
    field = "type" if argument == "owner_type" else argument  # the SDK sends owner_type as `type`
    assert field in body.get("errors", {}), f"errors should name the query parameter: {body}"


def test_pages_follow_each_other(appliance):
    for _ in range(5):
        create_ruleset(appliance.alice)
    expected = set(list_rulesets(appliance.alice, "my"))
    page_size = 2
    pages = math.ceil(len(expected) / page_size)
    assert pages >= 3

    seen = []
    for number in range(1, pages + 1):
        response = appliance.alice.get_yara_rulesets_on_the_appliance_v2(
            owner_type="my", status="all", source="all", page=str(number), page_size=str(page_size))
        body = expect_status(response, 200)
        assert (body["type"], body["status"], body["source"]) == ("my", "all", "all"), describe(response)
        assert body["count"] == len(expected), describe(response)
        assert len(body["results"]) == (page_size if number < pages else len(expected) - page_size * (pages - 1))
        seen.extend(item["name"] for item in body["results"])

        if number < pages:
            link = urlsplit(body["next"])
            assert f"{link.scheme}://{link.netloc}" == appliance.server.base_url, f"next is not absolute: {body['next']}"
            assert link.path.rstrip("/") == "/api/yara/v2/rulesets"
            query = parse_qs(link.query)
            assert query.get("page") == [str(number + 1)], body["next"]
            assert query.get("page_size") == [str(page_size)], body["next"]
            assert (query.get("type"), query.get("status"), query.get("source")) == (["my"], ["all"], ["all"]), \
                f"next must keep the filters: {body['next']}"
        else:
            assert body["next"] is None, describe(response)
        if number == 1:
            assert body["previous"] is None, describe(response)
        else:
            query = parse_qs(urlsplit(body["previous"]).query)
            assert query.get("page", ["1"]) == [str(number - 1)], body["previous"]

    assert len(seen) == len(set(seen)), "a ruleset appeared on two pages"
    assert set(seen) == expected

    expect_error(NotFoundError, appliance.alice.get_yara_rulesets_on_the_appliance_v2, owner_type="my",
                 page=str(pages + 1), page_size=str(page_size))


def test_page_without_page_size_is_400(sync_off):
    # The SDK refuses to send this itself, so it goes out as a plain request.
    response = sync_off.get("/api/yara/v2/rulesets/", params={"page": "1"})
    body = expect_status(response, 400)
    assert isinstance(body.get("message"), str) and body.get("code"), describe(response)


@pytest.mark.parametrize(("page", "page_size"), [("0", "2"), ("-1", "2"), ("abc", "2"), ("1", "0"), ("1", "abc")])
def test_bad_paging_values_are_400(sync_off, page, page_size):
    expect_error(BadRequestError, sync_off.alice.get_yara_rulesets_on_the_appliance_v2, page=page,
                 page_size=page_size)


# --- activation ----------------------------------------------------------------------------------

def test_sync_off_activates_every_valid_revision_at_once(sync_off):
    name = create_ruleset(sync_off.alice, publish=True)  # `publish` changes nothing with YARA Sync off
    wait_for_ruleset(sync_off.alice, name, "active", published_revision=1)
    assert sync_off.detail(name)["published_revision"] == 1

    assert save_ruleset(sync_off.alice, name, rule_text(rules=2), 200)["revision"] == 2
    item = wait_for_ruleset(sync_off.alice, name, "active", published_revision=2)
    assert (item["revision"], item["rule_count"]) == (2, 2), item


def test_sync_on_new_revisions_wait_for_a_publish(sync_on):
    waiting = create_ruleset(sync_on.alice)
    assert wait_for_ruleset(sync_on.alice, waiting, "pending")["published_revision"] is None

    # Publishing another ruleset and seeing it active shows a generation was built after `waiting`
    # was written: if writes were activated, `waiting` would be active by now.
    other = create_ruleset(sync_on.alice)
    activate(sync_on, other, 1)
    item = find_ruleset(sync_on.alice, waiting)
    assert (item["status"], item["published_revision"]) == ("pending", None), item
    assert sync_on.detail(waiting)["status"] == "pending"

    activate(sync_on, waiting, 1)
    assert save_ruleset(sync_on.alice, waiting, rule_text(rules=2), 200)["revision"] == 2
    # The published revision stays active until the new one is published.
    item = find_ruleset(sync_on.alice, waiting)
    assert (item["status"], item["revision"], item["published_revision"]) == ("active", 2, 1), item
    item = activate(sync_on, waiting, 2)
    assert item["rule_count"] == 2, item


# --- enable, disable -----------------------------------------------------------------------------

def test_owner_disables_and_enables_a_ruleset(appliance):
    name = create_ruleset(appliance.alice)
    activate(appliance, name, 1)

    response = appliance.alice.enable_or_disable_yara_ruleset(False, name)
    assert expect_status(response, 200) == {"message": "Ruleset disabled.", "detail": {"name": name}}, \
        describe(response)
    wait_for_ruleset(appliance.alice, name, "disabled")
    assert name in list_rulesets(appliance.alice, "my", "disabled")

    response = appliance.alice.enable_or_disable_yara_ruleset(True, name)
    assert expect_status(response, 200) == {"message": "Ruleset enabled.", "detail": {"name": name}}, \
        describe(response)
    # Enabling creates no revision: the published one comes back, with or without YARA Sync.
    wait_for_ruleset(appliance.alice, name, "active", published_revision=1)


def test_sync_on_a_never_published_ruleset_is_pending_again_when_enabled(sync_on):
    name = create_ruleset(sync_on.alice)
    expect_status(sync_on.alice.enable_or_disable_yara_ruleset(False, name), 200)
    wait_for_ruleset(sync_on.alice, name, "disabled")
    expect_status(sync_on.alice.enable_or_disable_yara_ruleset(True, name), 200)
    assert wait_for_ruleset(sync_on.alice, name, "pending")["published_revision"] is None


@pytest.mark.parametrize("enabled", [False, True])
def test_regular_user_cannot_enable_or_disable_another_users_ruleset(appliance, enabled):
    name = create_ruleset(appliance.bob)
    if enabled:  # alice tries to enable a ruleset bob disabled
        expect_status(appliance.bob.enable_or_disable_yara_ruleset(False, name), 200)
        wait_for_ruleset(appliance.bob, name, "disabled")
    expect_error(ForbiddenError, appliance.alice.enable_or_disable_yara_ruleset, enabled, name)
    item = find_ruleset(appliance.bob, name)
    assert (item["status"] == "disabled") == enabled, f"the refused call changed the ruleset: {item}"


def test_superuser_disables_another_users_ruleset(appliance):
    name = create_ruleset(appliance.bob)
    response = appliance.admin.enable_or_disable_yara_ruleset(False, name)
    assert expect_status(response, 200)["message"] == "Ruleset disabled.", describe(response)
    wait_for_ruleset(appliance.bob, name, "disabled")


@pytest.mark.parametrize("enabled", [False, True])
def test_enable_or_disable_of_an_unknown_ruleset_is_404(appliance, enabled):
    name = create_ruleset(appliance.alice)
    expect_status(appliance.alice.enable_or_disable_yara_ruleset(enabled, name), 200)  # the endpoint is there
    expect_error(NotFoundError, appliance.alice.enable_or_disable_yara_ruleset, enabled, unique("ghost"))


# --- delete --------------------------------------------------------------------------------------

def test_owner_deletes_a_ruleset(appliance):
    name = create_ruleset(appliance.alice)
    activate(appliance, name, 1)

    response = appliance.alice.delete_yara_ruleset(name, publish=True)
    assert expect_status(response, 200) == {"message": "Ruleset deleted.", "detail": {"name": name}}, \
        describe(response)
    expect_error(NotFoundError, appliance.alice.get_yara_ruleset_contents, name)
    assert find_ruleset(appliance.alice, name) is None
    expect_error(NotFoundError, appliance.alice.delete_yara_ruleset, name)  # now unknown

    # The name is free again: a new ruleset starts over at revision 1, and nothing of the deleted one's
    # publishing carries over to it.
    create_ruleset(appliance.alice, name)
    if appliance.yara_sync:
        item = wait_for_ruleset(appliance.alice, name, "pending")
        assert (item["revision"], item["published_revision"]) == (1, None), item
    else:
        wait_for_ruleset(appliance.alice, name, "active", revision=1, published_revision=1)
    assert revision_numbers(appliance, name) == [1]


def test_regular_user_cannot_delete_another_users_ruleset(appliance):
    name = create_ruleset(appliance.bob)
    expect_error(ForbiddenError, appliance.alice.delete_yara_ruleset, name)
    assert find_ruleset(appliance.bob, name) is not None


def test_superuser_deletes_another_users_ruleset(appliance):
    name = create_ruleset(appliance.bob)
    response = appliance.admin.delete_yara_ruleset(name)
    assert expect_status(response, 200)["message"] == "Ruleset deleted.", describe(response)
    assert find_ruleset(appliance.bob, name) is None


# --- publishing with YARA Sync off ---------------------------------------------------------------

SYNC_OFF_PUBLISH_CALLS = {
    "all-by-admin": lambda appliance, name: appliance.admin.publish_all_yara_rulesets(),
    "all-by-alice": lambda appliance, name: appliance.alice.publish_all_yara_rulesets(),
    "single-by-owner": lambda appliance, name: appliance.alice.publish_single_yara_ruleset(name),
    "single-by-admin": lambda appliance, name: appliance.admin.publish_single_yara_ruleset(name),
    "single-unknown": lambda appliance, name: appliance.alice.publish_single_yara_ruleset(unique("ghost")),
}


@pytest.mark.parametrize("call", SYNC_OFF_PUBLISH_CALLS)
def test_sync_off_publishing_is_403_sync_disabled(sync_off, call):
    name = create_ruleset(sync_off.alice)
    body = expect_error(ForbiddenError, SYNC_OFF_PUBLISH_CALLS[call], sync_off, name)
    assert body["code"] == "sync_disabled", body


def test_sync_off_seed_publish_form_and_rollback_are_403_sync_disabled(sync_off):
    name = create_ruleset(sync_off.alice)
    for response in (sync_off.post(f"/api/yara/publish/{name}/"), sync_off.rollback(name, 1)):
        assert expect_status(response, 403).get("code") == "sync_disabled", describe(response)


# --- publishing with YARA Sync on ----------------------------------------------------------------

def test_sync_on_publish_single_activates_the_latest_revision(sync_on):
    name = create_ruleset(sync_on.alice)
    publish(sync_on.alice, name)
    # Published at once; active once the new generation is loaded, pending until then.
    item = find_ruleset(sync_on.alice, name)
    assert item["published_revision"] == 1 and item["status"] in ("pending", "active"), item
    item = wait_for_ruleset(sync_on.alice, name, "active", published_revision=1)
    assert item["revision"] == 1
    assert sync_on.detail(name)["published_revision"] == 1


def test_sync_on_publish_single_with_nothing_to_publish_is_400(sync_on):
    name = create_ruleset(sync_on.alice)
    activate(sync_on, name, 1)
    expect_error(BadRequestError, sync_on.alice.publish_single_yara_ruleset, name)
    item = find_ruleset(sync_on.alice, name)
    assert (item["status"], item["published_revision"]) == ("active", 1), item


def test_sync_on_publish_single_of_an_invalid_revision_is_400_with_its_diagnostic(sync_on):
    name = create_ruleset(sync_on.alice, content=INVALID_RULESET)
    wait_for_ruleset(sync_on.alice, name, "invalid")
    body = expect_error(BadRequestError, sync_on.alice.publish_single_yara_ruleset, name)
    assert "line 2" in body["message"], f"the message should carry the first diagnostic: {body}"
    item = find_ruleset(sync_on.alice, name)
    assert (item["status"], item["published_revision"]) == ("invalid", None), item


def test_sync_on_regular_user_cannot_publish_another_users_ruleset(sync_on):
    name = create_ruleset(sync_on.bob)
    expect_error(ForbiddenError, sync_on.alice.publish_single_yara_ruleset, name)
    assert find_ruleset(sync_on.bob, name)["published_revision"] is None
    publish(sync_on.admin, name)  # a superuser publishes any non-system ruleset
    wait_for_ruleset(sync_on.bob, name, "active", published_revision=1)


def test_sync_on_publish_single_of_an_unknown_ruleset_is_404(sync_on):
    publish(sync_on.alice, create_ruleset(sync_on.alice))  # the endpoint itself is there
    expect_error(NotFoundError, sync_on.alice.publish_single_yara_ruleset, unique("ghost"))


def test_sync_on_seed_publish_form_publishes_too(sync_on):
    name = create_ruleset(sync_on.alice)
    response = sync_on.post(f"/api/yara/publish/{name}/")
    assert expect_status(response, 200) == {"message": f"Publishing {name} ruleset!"}, describe(response)
    wait_for_ruleset(sync_on.alice, name, "active", published_revision=1)


def test_sync_on_rollback_publishes_an_earlier_revision(sync_on):
    name = create_ruleset(sync_on.alice, content=rule_text(rules=1))
    activate(sync_on, name, 1)
    save_ruleset(sync_on.alice, name, rule_text(rules=2), 200)
    activate(sync_on, name, 2)

    expect_status(sync_on.rollback(name, 1, as_user="bob"), 403)
    response = sync_on.rollback(name, 1)
    assert expect_status(response, 200) == {"message": f"Publishing {name} ruleset!"}, describe(response)
    wait_for_ruleset(sync_on.alice, name, "active", published_revision=1, revision=2)
    assert revision_numbers(sync_on, name) == [2, 1], "a rollback creates no revision"

    # The latest revision is no longer the published one, so a plain publish brings it back.
    publish(sync_on.alice, name)
    wait_for_ruleset(sync_on.alice, name, "active", published_revision=2)

    save_ruleset(sync_on.alice, name, INVALID_RULESET, 200)
    response = sync_on.rollback(name, 3)
    assert "line 2" in expect_status(response, 400)["message"], describe(response)
    assert find_ruleset(sync_on.alice, name)["published_revision"] == 2


def test_sync_on_publish_all_is_for_superusers(sync_on):
    name = create_ruleset(sync_on.alice)
    body = expect_error(ForbiddenError, sync_on.alice.publish_all_yara_rulesets)
    assert body["code"] != "sync_disabled", body
    item = find_ruleset(sync_on.alice, name)
    assert (item["status"], item["published_revision"]) == ("pending", None), item


def test_sync_on_publish_all_publishes_every_changed_enabled_ruleset(sync_on):
    alice, bob = sync_on.alice, sync_on.bob
    new_valid = create_ruleset(alice)
    new_invalid = create_ruleset(alice, content=INVALID_RULESET)
    unchanged = create_ruleset(alice)
    activate(sync_on, unchanged, 1)
    updated = create_ruleset(alice)
    activate(sync_on, updated, 1)
    save_ruleset(alice, updated, rule_text(), 200)
    broken = create_ruleset(alice)
    activate(sync_on, broken, 1)
    save_ruleset(alice, broken, INVALID_RULESET, 200)
    disabled = create_ruleset(alice)
    expect_status(alice.enable_or_disable_yara_ruleset(False, disabled), 200)
    rolled_back = create_ruleset(alice)
    activate(sync_on, rolled_back, 1)
    save_ruleset(alice, rolled_back, rule_text(), 200)
    activate(sync_on, rolled_back, 2)
    expect_status(sync_on.rollback(rolled_back, 1), 200)
    bobs = create_ruleset(bob)
    ours = {new_valid, new_invalid, unchanged, updated, broken, disabled, rolled_back, bobs}

    report = publish_all(sync_on.admin)
    errors = [entry for entry in report["error_messages"] if entry["ruleset_name"] in ours]
    assert sorted(entry["ruleset_name"] for entry in errors) == sorted([new_invalid, broken]), report
    for entry in errors:
        assert "line 2" in entry["message"], f"the message should carry the first diagnostic: {entry}"
    # new_valid, updated, rolled_back and bobs were published; other tests' rulesets may be counted too.
    assert report["successful_publish_count"] >= 4, report
    assert report["total_count"] >= 6, report

    wait_for_ruleset(alice, new_valid, "active", published_revision=1)
    wait_for_ruleset(alice, updated, "active", published_revision=2)
    wait_for_ruleset(alice, rolled_back, "active", published_revision=2)
    wait_for_ruleset(alice, bobs, "active", published_revision=1)
    for name, status, published, revision in [(unchanged, "active", 1, 1), (broken, "active", 1, 2),
                                              (new_invalid, "invalid", None, 1), (disabled, "disabled", None, 1)]:
        item = find_ruleset(alice, name)
        assert (item["status"], item["published_revision"], item["revision"]) == (status, published, revision), item

    # Nothing was written since: only the invalid ones remain to publish, and they fail again.
    again = publish_all(sync_on.admin)
    assert again["successful_publish_count"] == 0, again
    assert again["total_count"] == len(again["error_messages"]), again
    assert {entry["ruleset_name"] for entry in again["error_messages"]} & ours == {new_invalid, broken}, again

    # The disabled ruleset was left out, so it is still waiting for its first publish once enabled.
    expect_status(alice.enable_or_disable_yara_ruleset(True, disabled), 200)
    wait_for_ruleset(alice, disabled, "pending", published_revision=None)
