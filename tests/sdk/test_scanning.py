"""Scanning and what it records, through ReversingLabs.SDK.a1000.A1000 (`get_yara_ruleset_matches_v2`,
`start_or_stop_yara_local_retro_scan`, `get_yara_local_retro_scan_status`) and Ruleyard's own scan
endpoint (`POST /api/yara/scan/`, which the SDK lacks).

Contract: API.md sections 1.4, 5 (matches) and 6, BEHAVIOUR.md sections 3 (scan variables) and 4
(activation, `capped`). Every test makes its own uniquely named rulesets and scans samples whose
contents embed a fresh uuid, so the samples a ruleset matched are exactly the test's own although the
servers are shared by the whole session. The local retro hunt is global state on a server: its tests
start only when no hunt is running and leave none running (`idle_hunt`). Activation and hunts are
asynchronous: the tests poll instead of sleeping.
"""

import hashlib
import re
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from ReversingLabs.SDK.helper import BadRequestError, ConflictError, NotFoundError, WrongInputError

from support import (MATCH_CAP, POLL_INTERVAL_SECONDS, create_ruleset, describe, expect_error, expect_status,
                     find_ruleset, list_rulesets, parse_timestamp, save_ruleset, unique, wait_for_ruleset)

SCAN = "/api/yara/scan/"
MATCHES = "/api/yara/v2/ruleset/matches/"
HUNT = "/api/uploads/local-retro-hunt/"
SCAN_FIELDS = {"sha256", "size", "generation", "duration_ms", "matches"}
MATCH_FIELDS = {"ruleset", "rule", "tags", "meta"}
SAMPLE_FIELDS = {"sha256", "size", "filename", "first_seen", "last_seen"}
HUNT_FIELDS = {"state", "started", "stopped", "samples", "processed"}
HUNT_STATES = {"NOT_STARTED", "RUNNING", "STOPPING", "COMPLETED", "STOPPED"}
HUNT_ALIVE = {"RUNNING", "STOPPING"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COUNT_KEYS = ("malicious_match_count", "suspicious_match_count", "goodware_match_count", "unknown_match_count")
# Generous: a hunt over the session's few small samples takes well under a second.
HUNT_TIMEOUT_SECONDS = 60
# The slow rule's outer loop: about a quarter of a second per slow sample on a debug build.
SLOW_LOOPS = 1000
SLOW_SAMPLE_PADDING = 20_000


def marker() -> str:
    return uuid.uuid4().hex


def now_ms() -> datetime:
    """Now, truncated to the milliseconds of the server's timestamps."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def rule(name: str, needle: str, tags: tuple[str, ...] = (), meta: str = "", condition: str = "$a") -> str:
    """One rule that matches files containing `needle`."""
    header = f"rule {name}" + (f" : {' '.join(tags)}" if tags else "")
    meta_section = f"    meta:\n{meta}" if meta else ""
    return (f"{header} {{\n{meta_section}    strings:\n        $a = \"{needle}\"\n"
            f"    condition:\n        {condition}\n}}\n")


def active_ruleset(appliance, content: str, client=None) -> str:
    """Creates a ruleset (alice's unless `client` says otherwise) and waits until it is active, so that
    scans use it."""
    client = client or appliance.alice
    name = create_ruleset(client, content=content)
    wait_for_ruleset(client, name, "active", published_revision=1)
    return name


# --- scanning (ext) ------------------------------------------------------------------------------

def scan_response(appliance, content: bytes, filename: str | None = None, multipart_name: str | None = None,
                  as_user: str = "alice"):
    """Ruleyard's `POST /api/yara/scan/`: the raw body, or with `multipart_name` the multipart `file` field
    with that file name; `filename` goes into the query."""
    params = {"filename": filename} if filename is not None else None
    if multipart_name is not None:
        return appliance.post(SCAN, as_user=as_user, params=params,
                              files={"file": (multipart_name, content, "application/octet-stream")})
    return appliance.post(SCAN, as_user=as_user, params=params, data=content,
                          headers={"Content-Type": "application/octet-stream"})


def scan(appliance, content: bytes, filename: str | None = None, multipart_name: str | None = None,
         as_user: str = "alice") -> dict:
    """Scans `content`, checks the 200 answer's shape and that it describes this content; returns it."""
    response = scan_response(appliance, content, filename, multipart_name, as_user)
    body = expect_status(response, 200)
    assert SCAN_FIELDS <= body.keys(), f"scan answer lacks {SCAN_FIELDS - body.keys()}: {describe(response)}"
    assert body["sha256"] == hashlib.sha256(content).hexdigest(), describe(response)
    assert body["size"] == len(content), describe(response)
    assert isinstance(body["generation"], int) and body["generation"] >= 1, describe(response)
    assert isinstance(body["duration_ms"], (int, float)) and body["duration_ms"] >= 0, describe(response)
    assert "timed_out" not in body, f"a scan of a few bytes does not time out: {describe(response)}"
    assert isinstance(body["matches"], list), describe(response)
    for match in body["matches"]:
        assert set(match) == MATCH_FIELDS, f"match fields: {match}"
        assert isinstance(match["tags"], list) and isinstance(match["meta"], dict), match
    return body


def matched(body: dict, ruleset: str | None = None) -> set[str]:
    """`ruleset:rule` of each match of a scan answer (of one ruleset only, when given)."""
    return {f"{m['ruleset']}:{m['rule']}" for m in body["matches"] if ruleset in (None, m["ruleset"])}


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# --- matches (SDK) -------------------------------------------------------------------------------

def check_sample(item: dict) -> dict:
    assert set(item) == SAMPLE_FIELDS, f"sample fields: {item}"
    assert SHA256.match(item["sha256"]), item
    assert isinstance(item["size"], int) and not isinstance(item["size"], bool) and item["size"] >= 0, item
    assert item["filename"] is None or isinstance(item["filename"], str), item
    assert parse_timestamp(item["first_seen"]) <= parse_timestamp(item["last_seen"]), item
    return item


def matches_response(client, names: str | list[str], page: str | None = None, page_size: str | None = None) -> dict:
    """`get_yara_ruleset_matches_v2` (a copy of a list: the SDK rewrites the list it is given); checks
    the envelope and every item."""
    response = client.get_yara_ruleset_matches_v2(list(names) if isinstance(names, list) else names,
                                                  page=page, page_size=page_size)
    body = expect_status(response, 200)
    assert set(body) == {"count", "next", "previous", "results"}, describe(response)
    assert isinstance(body["count"], int) and body["count"] >= len(body["results"]), describe(response)
    for item in body["results"]:
        check_sample(item)
    shas = [item["sha256"] for item in body["results"]]
    assert len(shas) == len(set(shas)), f"a sample is listed twice: {describe(response)}"
    if page is None:
        assert (body["next"], body["previous"]) == (None, None), f"unpaged answer has links: {describe(response)}"
        assert body["count"] == len(body["results"]), f"unpaged count disagrees with results: {describe(response)}"
    return body


def matched_samples(client, names: str | list[str]) -> dict[str, dict]:
    """Every sample that matched all of `names` (unpaged), by sha256."""
    return {item["sha256"]: item for item in matches_response(client, names)["results"]}


def test_scan_reports_the_matching_rules_with_their_tags_and_meta(sync_off):
    m = marker()
    tagged, plain = f"tagged_{m[:12]}", f"plain_{m[:12]}"
    meta = '        author = "ruleyard"\n        score = 7\n        final = true\n'
    name = active_ruleset(sync_off, rule(tagged, f"tagged-{m}", ("malicious", "family_x"), meta)
                          + rule(plain, f"plain-{m}"))

    body = scan(sync_off, f"sample tagged-{m} and plain-{m}".encode())
    ours = sorted((item for item in body["matches"] if item["ruleset"] == name), key=lambda item: item["rule"])
    assert ours == [
        {"ruleset": name, "rule": plain, "tags": [], "meta": {}},
        {"ruleset": name, "rule": tagged, "tags": ["malicious", "family_x"],
         "meta": {"author": "ruleyard", "score": 7, "final": True}},
    ], body
    assert matched(scan(sync_off, f"sample plain-{m}".encode()), name) == {f"{name}:{plain}"}
    assert matched(scan(sync_off, f"sample {m} matching nothing".encode()), name) == set()


def test_scan_takes_a_multipart_file_and_a_file_name(sync_off):
    """The file name comes from the `filename` query or the multipart field; scans set the `filename`
    and `extension` variables from it (BEHAVIOUR.md 3), and the samples the matches list carry it."""
    m = marker()
    file_name = f"evil-{m[:12]}.EXE"
    name = active_ruleset(sync_off, rule(
        f"named_{m[:12]}", f"named-{m}", condition=f'$a and filename == "{file_name}" and extension == "exe"'))
    raw, multipart, nameless = (f"named-{m} {kind}".encode() for kind in ("raw", "multipart", "nameless"))

    assert matched(scan(sync_off, raw, filename=f"some/dir/{file_name}"), name) == {f"{name}:named_{m[:12]}"}
    assert matched(scan(sync_off, multipart, multipart_name=file_name), name) == {f"{name}:named_{m[:12]}"}
    assert matched(scan(sync_off, nameless), name) == set(), "without a file name `filename` is empty"

    samples = matched_samples(sync_off.alice, name)
    assert set(samples) == {sha256_of(raw), sha256_of(multipart)}, samples
    assert samples[sha256_of(raw)]["filename"] == f"some/dir/{file_name}", samples
    assert samples[sha256_of(multipart)]["filename"] == file_name, samples


def test_multipart_without_a_file_field_is_400(sync_off):
    response = sync_off.post(SCAN, files={"other": ("x.bin", b"data")})
    assert response.status_code == 400, describe(response)
    assert "file" in response.json().get("errors", {}), describe(response)


def test_a_scan_uses_only_rulesets_active_now(sync_on):
    """With YARA Sync on, a pending ruleset matches nothing until it is published (BEHAVIOUR.md 4)."""
    m = marker()
    name = create_ruleset(sync_on.alice, content=rule(f"later_{m[:12]}", f"later-{m}"))
    wait_for_ruleset(sync_on.alice, name, "pending")
    sample = f"sample later-{m}".encode()
    first = scan(sync_on, sample)
    assert matched(first, name) == set(), first
    assert matches_response(sync_on.alice, name)["count"] == 0

    expect_status(sync_on.alice.publish_single_yara_ruleset(name), 200)
    wait_for_ruleset(sync_on.alice, name, "active", published_revision=1)
    second = scan(sync_on, sample)
    assert matched(second, name) == {f"{name}:later_{m[:12]}"}, second
    assert second["generation"] > first["generation"], "publishing builds a new generation"

    (item,) = matched_samples(sync_on.alice, name).values()
    assert item["sha256"] == sha256_of(sample)
    # The sample was first seen by the scan that matched nothing.
    assert parse_timestamp(item["first_seen"]) < parse_timestamp(item["last_seen"]), item


# --- the matches query ---------------------------------------------------------------------------

def test_matches_of_one_ruleset_are_the_samples_it_matched(sync_off):
    m = marker()
    name = active_ruleset(sync_off, rule(f"one_{m[:12]}", f"one-{m}"))
    before = now_ms()
    hits = [f"hit {index} one-{m}".encode() + bytes(index) for index in range(3)]
    for content in hits:
        assert matched(scan(sync_off, content), name), f"{content!r} should match {name}"
    scan(sync_off, f"miss one {m}".encode())
    after = now_ms()

    samples = matched_samples(sync_off.alice, name)
    assert set(samples) == {sha256_of(content) for content in hits}
    for content in hits:
        item = samples[sha256_of(content)]
        assert (item["size"], item["filename"]) == (len(content), None), item
        assert before <= parse_timestamp(item["first_seen"]) <= parse_timestamp(item["last_seen"]) <= after, \
            f"seen outside the test's scans ({before} to {after}): {item}"
    # Any user may read them.
    assert set(matched_samples(sync_off.bob, name)) == set(samples)


def test_matches_of_several_rulesets_are_the_samples_that_matched_all(sync_off):
    m = marker()
    first = active_ruleset(sync_off, rule(f"first_{m[:12]}", f"first-{m}"))
    second = active_ruleset(sync_off, rule(f"second_{m[:12]}", f"second-{m}"), client=sync_off.bob)
    third = active_ruleset(sync_off, rule(f"third_{m[:12]}", f"third-{m}"))
    contents = {
        "first": f"first-{m}",
        "second": f"second-{m}",
        "first+second": f"first-{m} second-{m}",
        "all": f"first-{m} second-{m} third-{m}",
    }
    shas = {}
    for key, text in contents.items():
        scan(sync_off, text.encode())
        shas[key] = sha256_of(text.encode())

    def expected(*keys):
        return {shas[key] for key in keys}

    assert set(matched_samples(sync_off.alice, first)) == expected("first", "first+second", "all")
    assert set(matched_samples(sync_off.alice, [first])) == expected("first", "first+second", "all")
    assert set(matched_samples(sync_off.alice, [second])) == expected("second", "first+second", "all")
    assert set(matched_samples(sync_off.alice, [first, second])) == expected("first+second", "all")
    assert set(matched_samples(sync_off.alice, [second, first])) == expected("first+second", "all")
    assert set(matched_samples(sync_off.alice, [first, second, third])) == expected("all")
    assert set(matched_samples(sync_off.alice, [first, third])) == expected("all")


def test_naming_a_ruleset_twice_is_naming_it_once(sync_off):
    m = marker()
    name = active_ruleset(sync_off, rule(f"twice_{m[:12]}", f"twice-{m}"))
    sample = f"twice-{m}".encode()
    scan(sync_off, sample)
    assert set(matched_samples(sync_off.alice, [name])) == {sha256_of(sample)}
    body = matches_response(sync_off.alice, [name, name])
    assert {item["sha256"] for item in body["results"]} == {sha256_of(sample)}, \
        f"?name={name}&name={name} asks for the samples that matched {name}, one: {body}"


def test_matches_are_paged_with_page_and_page_size(sync_off):
    m = marker()
    first = active_ruleset(sync_off, rule(f"paged_a_{m[:12]}", f"paged-a-{m}"))
    second = active_ruleset(sync_off, rule(f"paged_b_{m[:12]}", f"paged-b-{m}"))
    shas = set()
    for index in range(5):
        content = f"{index} paged-a-{m} paged-b-{m}".encode()
        scan(sync_off, content)
        shas.add(sha256_of(content))
    scan(sync_off, f"paged-a-{m} only".encode())  # matches one of them only
    names = [first, second]
    assert set(matched_samples(sync_off.alice, names)) == shas

    seen = []
    for number in (1, 2, 3):
        body = matches_response(sync_off.alice, names, page=str(number), page_size="2")
        assert body["count"] == 5, body
        assert len(body["results"]) == (2 if number < 3 else 1), body
        seen.extend(item["sha256"] for item in body["results"])
        for link, target in (("next", number + 1 if number < 3 else None),
                             ("previous", number - 1 if number > 1 else None)):
            if target is None:
                assert body[link] is None, f"page {number}: {link} {body[link]}"
                continue
            parts = urlsplit(body[link])
            assert f"{parts.scheme}://{parts.netloc}" == sync_off.server.base_url, f"{link} not absolute: {body[link]}"
            query = parse_qs(parts.query)
            assert (parts.path.rstrip("/"), query.get("name"), query.get("page"), query.get("page_size")) == \
                (MATCHES.rstrip("/"), names, [str(target)], ["2"]), f"page {number}: {link} {body[link]}"
        if body["next"]:
            # The link is fetched as it is, as the SDK does with other lists' `next`.
            followed = expect_status(sync_off.get(body["next"].removeprefix(sync_off.server.base_url)), 200)
            following = matches_response(sync_off.alice, names, page=str(number + 1), page_size="2")
            assert followed == following, f"{body['next']} is not page {number + 1}"
    assert sorted(seen) == sorted(shas) and len(seen) == 5, f"pages overlap or miss samples: {seen}"

    expect_error(NotFoundError, sync_off.alice.get_yara_ruleset_matches_v2, list(names), page="4", page_size="2")
    whole = matches_response(sync_off.alice, names, page="1", page_size="1000")
    assert (whole["count"], whole["next"], whole["previous"]) == (5, None, None), whole
    assert {item["sha256"] for item in whole["results"]} == shas


def test_a_ruleset_that_matched_nothing_has_no_matches(sync_off):
    name = active_ruleset(sync_off, rule(f"never_{marker()[:12]}", f"never-{marker()}"))
    assert matches_response(sync_off.alice, name)["results"] == []
    paged = matches_response(sync_off.alice, name, page="1", page_size="10")
    assert (paged["count"], paged["next"], paged["previous"], paged["results"]) == (0, None, None, []), paged


def test_matches_need_a_name(sync_off):
    body = expect_error(BadRequestError, sync_off.alice.get_yara_ruleset_matches_v2, "")  # sends `?name=`
    assert "name" in body.get("errors", {}), body
    response = sync_off.get(MATCHES)
    assert response.status_code == 400, describe(response)
    assert "name" in response.json().get("errors", {}), describe(response)


def test_page_without_page_size_is_400(sync_off):
    name = active_ruleset(sync_off, rule(f"nosize_{marker()[:12]}", f"nosize-{marker()}"))
    # The SDK refuses to send it at all...
    with pytest.raises(WrongInputError):
        sync_off.alice.get_yara_ruleset_matches_v2(name, page="1")
    # ...and the server refuses it too.
    response = sync_off.get(MATCHES, params={"name": name, "page": "1"})
    assert response.status_code == 400, describe(response)
    assert response.json()["code"], describe(response)
    # `page_size` alone is not paging: everything, unpaged.
    body = expect_status(sync_off.get(MATCHES, params={"name": name, "page_size": "1"}), 200)
    assert (body["count"], body["next"], body["previous"]) == (0, None, None), body


@pytest.mark.parametrize("page, page_size", [("0", "2"), ("x", "2"), ("1", "0"), ("1", "-3")])
def test_page_values_that_are_not_positive_integers_are_400(sync_off, page, page_size):
    name = active_ruleset(sync_off, rule(f"badpage_{marker()[:12]}", f"badpage-{marker()}"))
    expect_error(BadRequestError, sync_off.alice.get_yara_ruleset_matches_v2, name, page=page, page_size=page_size)


def test_matches_of_an_unknown_ruleset_are_404(sync_off):
    known = active_ruleset(sync_off, rule(f"known_{marker()[:12]}", f"known-{marker()}"))
    matches_response(sync_off.alice, known)  # the endpoint itself is there
    expect_error(NotFoundError, sync_off.alice.get_yara_ruleset_matches_v2, unique("ghost"))
    expect_error(NotFoundError, sync_off.alice.get_yara_ruleset_matches_v2, [known, unique("ghost")])

    # A deleted ruleset is unknown too, whatever it matched.
    m = marker()
    deleted = active_ruleset(sync_off, rule(f"gone_{m[:12]}", f"gone-{m}"))
    scan(sync_off, f"gone-{m}".encode())
    assert len(matched_samples(sync_off.alice, deleted)) == 1
    expect_status(sync_off.alice.delete_yara_ruleset(deleted), 200)
    expect_error(NotFoundError, sync_off.alice.get_yara_ruleset_matches_v2, deleted)


# --- counters in the v2 list ---------------------------------------------------------------------

def test_match_counts_are_distinct_samples_per_classification(sync_off):
    m = marker()
    name = active_ruleset(sync_off, "".join([
        rule(f"bad_{m[:12]}", f"bad-{m}", ("malicious",)),
        rule(f"odd_{m[:12]}", f"odd-{m}", ("suspicious", "family_y")),
        rule(f"fine_{m[:12]}", f"fine-{m}", ("goodware",)),
        rule(f"what_{m[:12]}", f"what-{m}", ("family_z",)),
    ]))
    item = find_ruleset(sync_off.alice, name)
    assert (item["last_matched"], *(item[key] for key in COUNT_KEYS)) == (None, 0, 0, 0, 0), item

    before = now_ms()
    for text in (f"1 bad-{m}", f"2 bad-{m}", f"3 odd-{m} fine-{m}", f"4 what-{m}", f"5 bad-{m} what-{m}",
                 f"1 bad-{m}"):  # the first sample again: one sample, counted once
        scan(sync_off, text.encode())
    scan(sync_off, f"6 none of them {m}".encode())
    after = now_ms()

    item = find_ruleset(sync_off.alice, name)
    assert {key: item[key] for key in COUNT_KEYS} == {
        "malicious_match_count": 3, "suspicious_match_count": 1, "goodware_match_count": 1,
        "unknown_match_count": 2,
    }, item
    assert item["last_matched"] is not None, item
    assert before <= parse_timestamp(item["last_matched"]) <= after, \
        f"last_matched outside the test's scans ({before} to {after}): {item}"
    assert item["status"] == "active", item
    assert len(matched_samples(sync_off.alice, name)) == 5


# --- the local retro hunt ------------------------------------------------------------------------

def check_hunt(hunt: dict) -> dict:
    assert HUNT_FIELDS <= hunt.keys(), f"hunt lacks fields {HUNT_FIELDS - hunt.keys()}: {hunt}"
    assert hunt["state"] in HUNT_STATES, f"unknown hunt state: {hunt}"
    for key in ("samples", "processed"):
        assert isinstance(hunt[key], int) and not isinstance(hunt[key], bool) and hunt[key] >= 0, hunt
    assert hunt["processed"] <= hunt["samples"], hunt
    if hunt["state"] == "NOT_STARTED":
        assert (hunt["started"], hunt["stopped"], hunt["samples"], hunt["processed"]) == (None, None, 0, 0), hunt
        return hunt
    started = parse_timestamp(hunt["started"])
    if hunt["state"] in HUNT_ALIVE:
        assert hunt["stopped"] is None, f"a hunt that is alive has not stopped: {hunt}"
    else:
        assert started <= parse_timestamp(hunt["stopped"]), hunt
    if hunt["state"] == "COMPLETED":
        assert hunt["processed"] == hunt["samples"], f"a completed hunt processed every sample: {hunt}"
    return hunt


def hunt_status(client) -> dict:
    """`get_yara_local_retro_scan_status`, with its shape checked; returns `status`."""
    response = client.get_yara_local_retro_scan_status()
    body = expect_status(response, 200)
    assert body.get("success") is True, describe(response)
    assert isinstance(body.get("message"), str) and body["message"].strip(), describe(response)
    status = check_hunt(body["status"])
    history = status.get("history")
    assert isinstance(history, list), f"no history: {describe(response)}"
    for earlier in history:
        check_hunt(earlier)
        assert earlier["state"] in ("COMPLETED", "STOPPED"), f"an earlier hunt has ended: {describe(response)}"
    starts = [parse_timestamp(earlier["started"]) for earlier in history]
    assert starts == sorted(starts, reverse=True), f"history is not newest first: {describe(response)}"
    if status["state"] == "NOT_STARTED":
        assert history == [], describe(response)
    return status


def wait_for_hunt_end(client, timeout: float = HUNT_TIMEOUT_SECONDS) -> dict:
    """Polls the status until no hunt is alive; returns it."""
    started = time.monotonic()
    while True:
        status = hunt_status(client)
        if status["state"] not in HUNT_ALIVE:
            return status
        if time.monotonic() - started > timeout:
            pytest.fail(f"the local retro hunt did not end within {timeout}s: {status}")
        time.sleep(POLL_INTERVAL_SECONDS)


def hunt_operation(client, operation: str) -> dict:
    """`start_or_stop_yara_local_retro_scan`, which must succeed with 200."""
    response = client.start_or_stop_yara_local_retro_scan(operation)
    body = expect_status(response, 200)
    assert body.get("success") is True, describe(response)
    assert isinstance(body.get("message"), str) and body["message"].strip(), describe(response)
    return body


def summary(hunt: dict) -> dict:
    return {key: hunt[key] for key in HUNT_FIELDS}


@pytest.fixture
def idle_hunt(sync_off):
    """Waits until no local retro hunt is alive on the shared server, before the test and after it."""
    wait_for_hunt_end(sync_off.admin)
    yield sync_off
    wait_for_hunt_end(sync_off.admin)


def test_local_retro_hunt_records_matches_of_samples_scanned_before(idle_hunt):
    appliance = idle_hunt
    m = marker()
    samples = [f"retro {index} needle-{m}".encode() for index in range(3)]
    for index, content in enumerate(samples):
        # Scanned before the ruleset that matches them exists; the first carries a file name. (Other
        # tests' catch-all rules may match them: the server is shared.)
        scan(appliance, content, filename=f"retro-{m[:8]}.bin" if index == 0 else None)
    name = active_ruleset(appliance, rule(f"retro_{m[:12]}", f"needle-{m}", ("suspicious",)))
    assert matches_response(appliance.alice, name)["count"] == 0, "a new ruleset does not match old samples by itself"
    assert find_ruleset(appliance.alice, name)["last_matched"] is None

    previous = wait_for_hunt_end(appliance.admin)
    hunt_operation(appliance.admin, "START")
    hunt = wait_for_hunt_end(appliance.admin)
    assert hunt["state"] == "COMPLETED", hunt
    assert hunt["started"] != previous["started"], f"the status still shows the hunt before: {hunt}"
    assert hunt["samples"] == hunt["processed"] >= len(samples), hunt

    found = matched_samples(appliance.alice, name)
    assert set(found) == {sha256_of(content) for content in samples}, found
    assert found[sha256_of(samples[0])]["filename"] == f"retro-{m[:8]}.bin", "a hunt keeps the sample's file name"
    item = find_ruleset(appliance.alice, name)
    assert item["suspicious_match_count"] == len(samples), item
    assert item["last_matched"] is not None, item


def slow_rule(m: str) -> str:
    """A rule that takes a fraction of a second on each sample that carries `slow-<m>`, and no time on any
    other sample (the string is checked first)."""
    return rule(f"slow_{m[:12]}", f"slow-{m}",
                condition=f"$a and for any k in (1..{SLOW_LOOPS}) : "
                          f"(for any i in (0..filesize - 1) : (uint8(i) == k + 300))")


def test_local_retro_hunt_can_be_stopped_and_refuses_a_second_start(idle_hunt):
    """A hunt made long by samples that a slow rule takes a while on: START, START again (409), STOP."""
    appliance = idle_hunt
    m = marker()
    for index in range(6):  # scanned before the slow rule exists, so quickly
        scan(appliance, f"slow-{m} {index}".encode() + bytes(SLOW_SAMPLE_PADDING))
    slow = active_ruleset(appliance, slow_rule(m))
    try:
        previous = wait_for_hunt_end(appliance.admin)
        hunt_operation(appliance.admin, "START")
        conflict = expect_error(ConflictError, appliance.admin.start_or_stop_yara_local_retro_scan, "START")
        running = hunt_status(appliance.admin)
        hunt_operation(appliance.admin, "STOP")
        stopping = hunt_status(appliance.admin)
        stopped = wait_for_hunt_end(appliance.admin)
    finally:
        wait_for_hunt_end(appliance.admin)
        expect_status(appliance.alice.delete_yara_ruleset(slow), 200)

    assert conflict["code"], conflict
    assert running["state"] == "RUNNING", running
    assert running["samples"] >= 6, running
    if previous["state"] != "NOT_STARTED":
        assert running["history"] and summary(running["history"][0]) == summary(previous), \
            f"the hunt before is the newest earlier hunt: before {previous}, now {running}"
    assert stopping["state"] in ("STOPPING", "STOPPED"), stopping
    assert stopped["state"] == "STOPPED", stopped
    assert stopped["started"] == running["started"], f"another hunt: {running} then {stopped}"
    assert stopped["processed"] < stopped["samples"] == running["samples"], \
        f"a stopped hunt does not process every sample: {stopped}"

    # Nothing runs now: STOP is refused with 412, which the SDK returns rather than raises.
    response = appliance.admin.start_or_stop_yara_local_retro_scan("STOP")
    body = expect_status(response, 412)
    assert body.get("code") == "retro_hunt_not_running", describe(response)
    assert isinstance(body.get("message"), str) and body["message"].strip(), describe(response)
    assert summary(hunt_status(appliance.admin)) == summary(stopped)


def test_stop_without_a_running_hunt_is_412(idle_hunt):
    appliance = idle_hunt
    before = hunt_status(appliance.admin)
    response = appliance.admin.start_or_stop_yara_local_retro_scan("STOP")
    body = expect_status(response, 412)
    assert body.get("code") == "retro_hunt_not_running", describe(response)
    # A JSON body says the same (API.md 1.2).
    response = appliance.post(HUNT, as_user="admin", json={"operation": "STOP"})
    assert expect_status(response, 412).get("code") == "retro_hunt_not_running", describe(response)
    assert hunt_status(appliance.admin) == before


@pytest.mark.parametrize("operation", ["PAUSE", "start", "CLEAR", None])
def test_unknown_operation_is_400(idle_hunt, operation):
    appliance = idle_hunt
    before = hunt_status(appliance.admin)
    if operation is not None:
        with pytest.raises(WrongInputError):  # the SDK refuses before sending anything
            appliance.admin.start_or_stop_yara_local_retro_scan(operation)
    response = appliance.post(HUNT, as_user="admin", data={"operation": operation} if operation else None)
    assert response.status_code == 400, describe(response)
    assert "operation" in response.json().get("errors", {}), describe(response)
    assert hunt_status(appliance.admin) == before, "nothing started"


# --- capped (BEHAVIOUR.md 4) -----------------------------------------------------------------------

@pytest.mark.parametrize("release", ["edit", "re-enable"])
def test_a_ruleset_over_the_match_cap_is_capped_until_released(capped, release):
    """The `capped` server's cap is MATCH_CAP samples: one more is recorded and caps the ruleset, which then
    records nothing until it is edited or re-enabled."""
    m = marker()
    content = rule(f"capped_{m[:12]}", f"capped-{m}")
    name = active_ruleset(capped, content)
    samples = [f"{index} capped-{m}".encode() for index in range(MATCH_CAP + 2)]
    for content_ in samples[:MATCH_CAP]:
        scan(capped, content_)
    assert wait_for_ruleset(capped.alice, name, "active")["unknown_match_count"] == MATCH_CAP
    scan(capped, samples[MATCH_CAP])  # one more than the cap
    item = wait_for_ruleset(capped.alice, name, "capped")
    assert item["unknown_match_count"] == MATCH_CAP + 1, item
    assert name in list_rulesets(capped.alice, "my", "capped"), "status=capped lists it"
    assert name not in list_rulesets(capped.alice, "my", "active")

    scan(capped, samples[MATCH_CAP + 1])
    recorded = set(matched_samples(capped.alice, name))
    assert recorded == {sha256_of(content_) for content_ in samples[:MATCH_CAP + 1]}, \
        "a capped ruleset records no further match"
    assert find_ruleset(capped.alice, name)["unknown_match_count"] == MATCH_CAP + 1

    if release == "edit":
        assert save_ruleset(capped.alice, name, content + "// edited\n", 200)["revision"] == 2
        wait_for_ruleset(capped.alice, name, "active", published_revision=2)
    else:
        expect_status(capped.alice.enable_or_disable_yara_ruleset(False, name), 200)
        wait_for_ruleset(capped.alice, name, "disabled")
        expect_status(capped.alice.enable_or_disable_yara_ruleset(True, name), 200)
        wait_for_ruleset(capped.alice, name, "active")
    fresh = f"released capped-{m}".encode()
    assert matched(scan(capped, fresh), name), "the released ruleset is scanned with again"
    assert sha256_of(fresh) in matched_samples(capped.alice, name), "a released ruleset records matches again"
