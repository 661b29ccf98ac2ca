"""The update job through ReversingLabs.SDK.a1000.A1000 (`set_yara_update_interval`,
`reset_yara_update_interval`, `run_yara_update`) and Ruleyard's own endpoints around it
(`GET /api/yara/update/`, `GET /api/yara/update/runs/`, the repositories' file index and import).

Contract: API.md sections 2 (ext) and 3, BEHAVIOUR.md sections 2 and 5. The cadence and the runs are
global state, so these tests use a server of their own (`job`): no other module adds repositories that
its runs would fetch or starts runs there. Every test starts with no run alive and leaves the cadence
at 0 and no custom repository behind (`clean_job`), so a run's repositories are exactly the test's own.
Runs are asynchronous: the tests poll for their end instead of sleeping.
"""

import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from ReversingLabs.SDK.helper import BadRequestError, ConflictError, ForbiddenError

from support import (FETCH_TIMEOUT_SECONDS, FIXTURE_RULE_PATH, JOB_LEASE_SECONDS, POLL_INTERVAL_SECONDS,
                     check_outcome, counts, create_repository, describe, expect_error, expect_status, import_repository,
                     import_response, list_repositories, parse_timestamp, repository_files, repository_rulesets,
                     rule_text, unique, wait_for_ruleset)

MAX_INTERVAL = 30 * 24 * 3600
STATUS_FIELDS = {"interval_seconds", "enabled", "next_run_at", "running"}
RUN_FIELDS = {"id", "node", "trigger", "state", "started_at", "ended_at", "progress"}
RUN_STATES = {"running", "succeeded", "partial", "failed", "interrupted"}
# Generous: a run of local repositories takes well under a second, a stalled one the fetch timeout.
RUN_TIMEOUT_SECONDS = 60


def marker() -> str:
    return uuid.uuid4().hex[:10]


# --- status and runs -----------------------------------------------------------------------------

def job_status(job, as_user: str = "admin") -> dict:
    """Ruleyard's `GET /api/yara/update/`, with its shape checked."""
    response = job.get("/api/yara/update/", as_user=as_user)
    body = expect_status(response, 200)
    assert STATUS_FIELDS <= body.keys(), f"status lacks fields {STATUS_FIELDS - body.keys()}: {describe(response)}"
    interval = body["interval_seconds"]
    assert isinstance(interval, int) and not isinstance(interval, bool) and interval >= 0, describe(response)
    assert body["enabled"] is (interval > 0), f"enabled must say whether the interval is not 0: {describe(response)}"
    if body["enabled"]:
        parse_timestamp(body["next_run_at"])
    else:
        assert body["next_run_at"] is None, f"a disabled job has no next run: {describe(response)}"
    if body["running"] is not None:
        check_run(body["running"])
        assert body["running"]["state"] == "running", describe(response)
    return body


def check_run(run: dict) -> dict:
    assert RUN_FIELDS <= run.keys(), f"run lacks fields {RUN_FIELDS - run.keys()}: {run}"
    assert isinstance(run["id"], int) and not isinstance(run["id"], bool), run
    assert isinstance(run["node"], str) and run["node"], run
    assert isinstance(run["trigger"], str) and run["trigger"], run
    assert run["state"] in RUN_STATES, f"unknown run state: {run}"
    started = parse_timestamp(run["started_at"])
    if run["state"] == "running":
        assert run["ended_at"] is None, f"a running run has not ended: {run}"
    else:
        assert started <= parse_timestamp(run["ended_at"]), run
    progress = run["progress"]
    assert isinstance(progress, dict) and {"done", "total"} <= progress.keys(), run
    assert 0 <= progress["done"] <= progress["total"], run
    if run["state"] in ("succeeded", "partial", "failed"):
        assert progress["done"] == progress["total"], f"a finished run is done with every repository: {run}"
    return run


def get_run(job, run_id: int, as_user: str = "admin") -> dict:
    """Ruleyard's `GET /api/yara/update/runs/{id}/`, with its shape and its outcomes checked."""
    response = job.get(f"/api/yara/update/runs/{run_id}/", as_user=as_user)
    run = check_run(expect_status(response, 200))
    assert run["id"] == run_id, describe(response)
    assert isinstance(run.get("repositories"), list), describe(response)
    for outcome in run["repositories"]:
        check_outcome(outcome, outcome.get("repository"))
    assert len(run["repositories"]) == run["progress"]["done"], \
        f"one outcome per repository done: {describe(response)}"
    return run


def runs_page(job, page: int = 1, page_size: int = 100) -> dict:
    response = job.get("/api/yara/update/runs/", params={"page": page, "page_size": page_size})
    body = expect_status(response, 200)
    assert {"count", "next", "previous", "results"} <= body.keys(), describe(response)
    for run in body["results"]:
        check_run(run)
    return body


def newest_run_id(job) -> int:
    """The id of the newest run, 0 when there is none."""
    results = runs_page(job, page_size=1)["results"]
    return results[0]["id"] if results else 0


def wait_until_idle(job) -> None:
    """Waits until no run is alive, so that the next run may start."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while (status := job_status(job))["running"] is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"a run is still alive after {RUN_TIMEOUT_SECONDS}s: {status['running']}")
        time.sleep(POLL_INTERVAL_SECONDS)


def start_run(job) -> int:
    """Starts a run through the SDK once no run is alive; returns its id."""
    wait_until_idle(job)
    response = job.admin.run_yara_update()
    body = expect_status(response, 200)
    assert body.get("message") == "Job running!", describe(response)
    assert isinstance(body.get("run_id"), int) and not isinstance(body["run_id"], bool), describe(response)
    return body["run_id"]


def wait_for_run(job, run_id: int) -> dict:
    """Polls the run until it is no longer running; returns its record."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while (run := get_run(job, run_id))["state"] == "running":
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} did not end within {RUN_TIMEOUT_SECONDS}s: {run}")
        time.sleep(POLL_INTERVAL_SECONDS)
    return run


def run_to_end(job) -> dict:
    return wait_for_run(job, start_run(job))


def outcome_of(run: dict, repository_id: int) -> dict:
    matches = [outcome for outcome in run["repositories"] if outcome["repository"] == repository_id]
    assert len(matches) == 1, f"run {run['id']} has {len(matches)} outcomes for repository {repository_id}: {run}"
    return matches[0]


def set_interval(job, seconds: int) -> None:
    response = job.admin.set_yara_update_interval(seconds)
    assert expect_status(response, 200) == {"message": f"Job cadence configured to {seconds}!"}, describe(response)


@pytest.fixture(autouse=True)
def clean_job(job):
    """No run alive before a test; after it, the cadence back at 0, no run alive and no custom repository."""
    wait_until_idle(job)
    yield
    set_interval(job, 0)
    wait_until_idle(job)
    for item in list_repositories(job.admin, "user"):
        expect_status(job.admin.delete_yara_repository(item["id"], remove_rulesets=True), 200)


# --- cadence -------------------------------------------------------------------------------------

def test_set_interval_answers_with_the_cadence_and_applies_it_at_once(job):
    due = {}
    for seconds in (86400, MAX_INTERVAL):
        set_interval(job, seconds)
        status = job_status(job)
        assert (status["interval_seconds"], status["enabled"]) == (seconds, True), status
        due[seconds] = parse_timestamp(status["next_run_at"])
        assert job_status(job, as_user="alice") == status, "every user reads the same status"

    # Both are counted from the same start (of the last run, or of the server): the new cadence counts at once.
    assert due[MAX_INTERVAL] - due[86400] == timedelta(seconds=MAX_INTERVAL - 86400), due
    counted_from = due[86400] - timedelta(seconds=86400)
    assert counted_from <= datetime.now(timezone.utc) + timedelta(seconds=5), \
        f"the next run is counted from the future: {due}"

    set_interval(job, 0)
    status = job_status(job)
    assert (status["interval_seconds"], status["enabled"], status["next_run_at"]) == (0, False, None), status


def test_reset_interval_restores_3600(job):
    set_interval(job, 0)
    response = job.admin.reset_yara_update_interval()
    assert expect_status(response, 200) == {"message": "Job cadence configured to 3600!"}, describe(response)
    status = job_status(job)
    assert (status["interval_seconds"], status["enabled"]) == (3600, True), status
    assert status["next_run_at"] is not None


def test_a_short_cadence_starts_a_periodic_run_at_once(job):
    newest = newest_run_id(job)
    set_interval(job, 1)
    deadline = time.monotonic() + 10
    while newest_run_id(job) == newest:
        if time.monotonic() > deadline:
            pytest.fail("a cadence of 1 second started no run within 10s")
        time.sleep(POLL_INTERVAL_SECONDS)
    set_interval(job, 0)
    run = wait_for_run(job, newest_run_id(job))
    assert run["state"] == "succeeded", run


@pytest.mark.parametrize("seconds", [MAX_INTERVAL + 1, -1])
def test_set_interval_out_of_range_is_400(job, seconds):
    # The SDK checks only that `seconds` is an int: it sends a negative number as it is.
    set_interval(job, 7200)
    expect_error(BadRequestError, job.admin.set_yara_update_interval, seconds)
    assert job_status(job)["interval_seconds"] == 7200


@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0x10", "99999999999999999999999"])
def test_set_interval_that_is_not_a_whole_number_is_400(job, raw):
    set_interval(job, 7200)
    response = job.post(f"/api/yara/update/set-interval/{raw}/", as_user="admin")
    body = expect_status(response, 400)
    assert isinstance(body.get("message"), str) and body["message"].strip(), describe(response)
    assert isinstance(body.get("code"), str) and body["code"], describe(response)
    assert job_status(job)["interval_seconds"] == 7200


def test_regular_user_cannot_configure_or_run_the_job(job):
    set_interval(job, 7200)
    newest = newest_run_id(job)
    expect_error(ForbiddenError, job.alice.set_yara_update_interval, 60)
    expect_error(ForbiddenError, job.alice.reset_yara_update_interval)
    expect_error(ForbiddenError, job.alice.run_yara_update)
    status = job_status(job, as_user="alice")  # reading the status is for everyone (API.md 9)
    assert (status["interval_seconds"], status["running"]) == (7200, None), status
    assert newest_run_id(job) == newest, "a refused run must not start"


# --- runs ----------------------------------------------------------------------------------------

def test_run_imports_preference_2_repositories_and_records_the_outcome(job, upstreams):
    name = unique("auto")
    auto = create_repository(job.alice, upstreams.new(), name, import_update_preferences=2)
    manual = create_repository(job.alice, upstreams.new(), import_update_preferences=0)
    before = datetime.now(timezone.utc)

    run_id = start_run(job)
    run = wait_for_run(job, run_id)
    assert run["state"] == "succeeded", run
    assert run["progress"] == {"done": 1, "total": 1}, f"only preferences 1 and 2 are fetched: {run}"
    assert before - timedelta(seconds=5) <= parse_timestamp(run["started_at"]) <= datetime.now(timezone.utc)
    outcome = outcome_of(run, auto)
    assert outcome["name"] == name
    assert outcome["commit_before"] is None and outcome["commit_after"] is not None, outcome
    assert counts(outcome, "files_added", "files_changed", "files_removed", "rule_files", "skipped_files",
                  "rulesets_created", "revisions_created", "invalid_revisions") == \
        {"files_added": 1, "files_changed": 0, "files_removed": 0, "rule_files": 1, "skipped_files": 0,
         "rulesets_created": 1, "revisions_created": 1, "invalid_revisions": 0}, outcome
    assert (outcome["unchanged"], outcome["error"]) == (False, None), outcome
    assert runs_page(job)["results"][0]["id"] == run_id, "runs are listed newest first"

    rulesets = repository_rulesets(job.alice, auto)
    assert len(rulesets) == 1, rulesets
    ruleset = next(iter(rulesets.values()))
    assert (ruleset["owner"], ruleset["source_path"]) == ("alice", FIXTURE_RULE_PATH), ruleset
    wait_for_ruleset(job.alice, ruleset["name"], "active", revision=1)
    files = repository_files(job, auto)
    assert files.keys() == {FIXTURE_RULE_PATH}, files
    assert (files[FIXTURE_RULE_PATH]["state"], files[FIXTURE_RULE_PATH]["ruleset"]) == ("imported", ruleset["name"])
    assert repository_files(job, manual) == {} and repository_rulesets(job.alice, manual) == {}, \
        "a run does not touch a repository with preference 0"

    # Nothing changed upstream: the next run only checks the reference.
    again = run_to_end(job)
    assert again["id"] > run_id and again["state"] == "succeeded", again
    repeated = outcome_of(again, auto)
    assert repeated["unchanged"] is True, repeated
    assert repeated["commit_before"] == repeated["commit_after"] == outcome["commit_after"], repeated
    assert counts(repeated, "rulesets_created", "revisions_created") == \
        {"rulesets_created": 0, "revisions_created": 0}, repeated
    assert [item["id"] for item in runs_page(job)["results"][:2]] == [again["id"], run_id]


def test_preference_1_lists_new_files_as_available_and_updates_imported_ones(job, upstreams):
    tag = marker()
    first, second, third = (f"rules/{tag}_{n}.yara" for n in ("first", "second", "third"))
    url = upstreams.create({first: rule_text(), second: rule_text()})
    repository_id = create_repository(job.alice, url, import_update_preferences=1)

    outcome = outcome_of(run_to_end(job), repository_id)
    assert counts(outcome, "files_added", "rule_files", "rulesets_created", "revisions_created") == \
        {"files_added": 2, "rule_files": 2, "rulesets_created": 0, "revisions_created": 0}, outcome
    files = repository_files(job, repository_id)
    assert {path: item["state"] for path, item in files.items()} == {first: "available", second: "available"}
    assert repository_rulesets(job.alice, repository_id) == {}, "preference 1 imports no new file"

    # One file imported on demand; from then on the job keeps it up to date, and only it.
    assert import_repository(job, repository_id, {"paths": [first]})["rulesets_created"] == 1
    (name, item), = repository_rulesets(job.alice, repository_id).items()
    assert item["source_path"] == first, item
    changed = rule_text()
    upstreams.commit(url, {first: changed, third: rule_text()})

    outcome = outcome_of(run_to_end(job), repository_id)
    assert counts(outcome, "files_added", "files_changed", "files_removed", "rulesets_created",
                  "revisions_created") == \
        {"files_added": 1, "files_changed": 1, "files_removed": 0, "rulesets_created": 0, "revisions_created": 1}, \
        outcome
    files = repository_files(job, repository_id)
    assert {path: item["state"] for path, item in files.items()} == \
        {first: "imported", second: "available", third: "available"}, files
    assert files[first]["ruleset"] == name
    assert repository_rulesets(job.alice, repository_id).keys() == {name}
    wait_for_ruleset(job.alice, name, "active", revision=2, published_revision=2)
    content = expect_status(job.alice.get_yara_ruleset_contents(name), 200)["detail"]["content"]
    assert content == changed


def test_preference_2_follows_upstream_changes(job, upstreams):
    tag = marker()
    kept, removed, added = (f"rules/{tag}_{n}.yara" for n in ("kept", "removed", "added"))
    url = upstreams.create({kept: rule_text(), removed: rule_text(), "README.md": "rules\n"})
    repository_id = create_repository(job.alice, url, import_update_preferences=2)
    first = outcome_of(run_to_end(job), repository_id)
    assert counts(first, "rule_files", "rulesets_created", "revisions_created") == \
        {"rule_files": 2, "rulesets_created": 2, "revisions_created": 2}, first
    names = {item["source_path"]: name for name, item in repository_rulesets(job.alice, repository_id).items()}
    assert names.keys() == {kept, removed}, names

    # A commit that changes no rule file reads and creates nothing.
    commit = upstreams.commit(url, {"README.md": "rules, again\n"})
    outcome = outcome_of(run_to_end(job), repository_id)
    assert (outcome["commit_after"], outcome["unchanged"]) == (commit, False), outcome
    assert counts(outcome, "files_added", "files_changed", "files_removed", "rulesets_created",
                  "revisions_created") == \
        {"files_added": 0, "files_changed": 0, "files_removed": 0, "rulesets_created": 0, "revisions_created": 0}, \
        outcome

    # A change, a removal and a new file.
    upstreams.commit(url, {kept: rule_text(), removed: None, added: rule_text()})
    outcome = outcome_of(run_to_end(job), repository_id)
    assert counts(outcome, "files_added", "files_changed", "files_removed", "rulesets_created",
                  "revisions_created") == \
        {"files_added": 1, "files_changed": 1, "files_removed": 1, "rulesets_created": 1, "revisions_created": 2}, \
        outcome
    rulesets = repository_rulesets(job.alice, repository_id)
    assert len(rulesets) == 3, f"a file removed upstream keeps its ruleset: {rulesets}"
    names[added] = next(name for name, item in rulesets.items() if item["source_path"] == added)
    wait_for_ruleset(job.alice, names[kept], "active", revision=2)
    wait_for_ruleset(job.alice, names[removed], "disabled", revision=1)
    wait_for_ruleset(job.alice, names[added], "active", revision=1)
    files = repository_files(job, repository_id)
    assert {path: item["state"] for path, item in files.items()} == \
        {kept: "imported", removed: "removed_upstream", added: "imported"}, files

    # The file comes back (changed): its ruleset is enabled again, with a new revision.
    upstreams.commit(url, {removed: rule_text()})
    outcome = outcome_of(run_to_end(job), repository_id)
    assert counts(outcome, "rulesets_created", "revisions_created") == \
        {"rulesets_created": 0, "revisions_created": 1}, outcome
    assert repository_rulesets(job.alice, repository_id).keys() == set(names.values())
    wait_for_ruleset(job.alice, names[removed], "active", revision=2)
    assert repository_files(job, repository_id)[removed]["state"] == "imported"


def test_a_run_whose_only_repository_fails_is_failed(job, upstreams):
    url = upstreams.new()
    repository_id = create_repository(job.alice, url, import_update_preferences=1)
    upstreams.path(url).rename(upstreams.path(url).with_suffix(".gone"))  # the upstream is gone

    run = run_to_end(job)
    assert run["state"] == "failed", run
    assert run["progress"] == {"done": 1, "total": 1}, run
    outcome = outcome_of(run, repository_id)
    assert outcome["error"] is not None and outcome["commit_after"] is None, outcome
    sync = expect_status(job.get(f"/api/yara/repositories/{repository_id}/"), 200).get("sync")
    assert isinstance(sync, dict) and {"commit", "fetched_at", "error", "state"} <= sync.keys(), sync
    assert isinstance(sync["error"], str) and sync["error"], f"the repository's sync state keeps the error: {sync}"


def test_a_second_run_while_one_is_alive_is_409(job, upstreams, stalling_upstream):
    good = create_repository(job.alice, upstreams.new(), import_update_preferences=2)
    stalled = create_repository(job.alice, stalling_upstream.url, import_update_preferences=1)
    stalling_upstream.stall()

    run_id = start_run(job)
    started = time.monotonic()
    body = expect_error(ConflictError, job.admin.run_yara_update)
    assert (body["message"], body["code"]) == ("Job is already running", "job_running"), body
    running = job_status(job)["running"]
    assert running is not None and (running["id"], running["progress"]["total"]) == (run_id, 2), running
    assert runs_page(job)["results"][0]["id"] == run_id

    # Once the job is connected to the stalled upstream it holds that repository: an import waits its turn.
    stalling_upstream.wait_for_connection(timeout=10)
    response = import_response(job, stalled)
    assert response.status_code == 409 and response.json().get("code") == "repository_busy", describe(response)

    # The run outlives its lease (RULEYARD_JOB_LEASE_SECONDS) by renewing it: still one run at a time.
    renewal_checked = False
    deadline = started + RUN_TIMEOUT_SECONDS
    while (run := get_run(job, run_id))["state"] == "running":
        if not renewal_checked and time.monotonic() - started > 1.5 * JOB_LEASE_SECONDS:
            body = expect_error(ConflictError, job.admin.run_yara_update)
            assert body["code"] == "job_running", body
            renewal_checked = True
        if time.monotonic() > deadline:
            pytest.fail(f"the stalled run did not end within {RUN_TIMEOUT_SECONDS}s: {run}")
        time.sleep(POLL_INTERVAL_SECONDS)
    assert renewal_checked, f"the stalled run ended before {1.5 * JOB_LEASE_SECONDS}s, under the fetch timeout: {run}"

    assert run["state"] == "partial", f"one repository failed, the other succeeded: {run}"
    assert outcome_of(run, good)["error"] is None
    failure = outcome_of(run, stalled)
    assert failure["commit_after"] is None and failure["rulesets_created"] == 0, failure
    assert "second" in (failure["error"] or "").lower(), f"the error should say the fetch timed out: {failure}"
    assert failure["duration_ms"] < 3 * FETCH_TIMEOUT_SECONDS * 1000, f"the fetch timeout is a hard one: {failure}"
    assert stalling_upstream.server_hung_up(timeout=FETCH_TIMEOUT_SECONDS), \
        "the server left its connection to the stalled upstream open: the transfer was abandoned, not stopped"
    assert job_status(job)["running"] is None

    # Without the stalled repository the next run starts at once and succeeds.
    expect_status(job.alice.delete_yara_repository(stalled, remove_rulesets=True), 200)
    after = run_to_end(job)
    assert (after["state"], after["progress"]) == ("succeeded", {"done": 1, "total": 1}), after
    assert outcome_of(after, good)["unchanged"] is True
    assert [item["id"] for item in runs_page(job)["results"][:2]] == [after["id"], run_id]


def test_a_run_cut_short_by_a_crash_is_interrupted_when_the_node_starts_again(job, stalling_upstream):
    stalled = create_repository(job.alice, stalling_upstream.url, import_update_preferences=1)
    stalling_upstream.stall()
    run_id = start_run(job)
    stalling_upstream.wait_for_connection(timeout=10)

    job.server.crash_and_restart()
    deadline = time.monotonic() + 10
    while (run := get_run(job, run_id))["state"] == "running":
        if time.monotonic() > deadline:
            pytest.fail(f"the run cut short by the crash is still running 10s after the restart: {run}")
        time.sleep(POLL_INTERVAL_SECONDS)
    assert run["state"] == "interrupted", run
    assert job_status(job)["running"] is None

    # The dead run's lease lapses at the latest after RULEYARD_JOB_LEASE_SECONDS: then a run starts.
    expect_status(job.alice.delete_yara_repository(stalled, remove_rulesets=True), 200)
    deadline = time.monotonic() + JOB_LEASE_SECONDS + 5
    while True:
        response = job.post("/api/yara/update/run/", as_user="admin")
        if response.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL_SECONDS)
    after = wait_for_run(job, expect_status(response, 200)["run_id"])
    assert after["state"] == "succeeded", after
    assert get_run(job, run_id)["state"] == "interrupted", "a later run does not rewrite an interrupted one"


def test_runs_are_listed_newest_first_in_pages(job):
    ids = [run_to_end(job)["id"] for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3, ids

    first = runs_page(job, page=1, page_size=2)
    assert first["count"] >= 3 and first["previous"] is None, first
    assert [item["id"] for item in first["results"]] == [ids[2], ids[1]], first
    link = urlsplit(first["next"])
    assert f"{link.scheme}://{link.netloc}" == job.server.base_url, f"next is not absolute: {first['next']}"
    assert parse_qs(link.query).get("page_size") == ["2"], first["next"]
    second = expect_status(job.sessions["alice"].get(first["next"], timeout=30), 200)  # followed verbatim
    assert second["results"][0]["id"] == ids[0], second
    assert second["previous"] is not None


@pytest.mark.parametrize("run_id", ["2000000000", "abc"])
def test_unknown_run_is_404(job, run_id):
    response = job.get(f"/api/yara/update/runs/{run_id}/")
    assert response.status_code == 404, describe(response)
