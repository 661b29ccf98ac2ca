"""Fixtures for the SDK end-to-end suite.

A session starts the real `ruleyard serve` binary once per database backend (SQLite always,
PostgreSQL too when RULEYARD_TEST_POSTGRES_URL is set) with YARA Sync off, and, when a test asks for
it, a second one with YARA Sync on (each server has its own data directory and database, so they are
two independent single-node installations). It creates the users the tests act as and builds small
`file://` git repositories for the server's connection tests.
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000

from support import Appliance

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60
POSTGRES_URL = os.environ.get("RULEYARD_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

# A rule file that every upstream repository carries, so imports have something to import.
FIXTURE_RULE_PATH = "rules/sdk_fixture.yara"
FIXTURE_RULE = 'rule sdk_fixture_rule {\n    strings:\n        $a = "ruleyard-sdk-fixture"\n    condition:\n        $a\n}\n'


def server_binary() -> Path:
    configured = Path(os.environ.get("RULEYARD_BIN", "target/debug/ruleyard"))
    return configured if configured.is_absolute() else REPO_ROOT / configured


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    backend: str
    yara_sync: bool
    base_url: str
    env: dict
    log_path: Path
    admin_password: str
    process: subprocess.Popen = field(repr=False)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Runs `ruleyard <args>` against the same data directory and database as the server."""
        result = subprocess.run(
            [str(server_binary()), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (
            f"ruleyard {' '.join(args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until_healthy(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        try:
            # Doubles as the polling interval and as the check that the server has not died.
            code = process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"ruleyard serve exited with {code} before answering /healthz; log:\n{log_path.read_text()}")
    pytest.fail(f"ruleyard serve did not answer /healthz within {STARTUP_TIMEOUT_SECONDS}s; log: {log_path}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
                   check=True, capture_output=True, text=True, timeout=60)


@contextmanager
def fresh_postgres_database():
    """Creates a fresh PostgreSQL database and yields its URL; drops it afterwards."""
    name = f"ruleyard_sdk_{secrets.token_hex(6)}"
    psql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()
    finally:
        psql(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_server(tmp_path_factory, backend: str, yara_sync: bool):
    """Starts `ruleyard serve` on a fresh data directory (and a fresh database on PostgreSQL), waits
    until it is healthy, yields it and stops it. YARA Sync is always set explicitly: the server's
    default depends on the backend (off on SQLite, on with PostgreSQL)."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"server binary {binary} does not exist; build it with `cargo build` or set RULEYARD_BIN")

    workdir = tmp_path_factory.mktemp(f"ruleyard-{backend}-sync-{'on' if yara_sync else 'off'}")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RULEYARD_")}
    env.update(
        RULEYARD_LISTEN=f"127.0.0.1:{port}",
        RULEYARD_DATA_DIR=str(workdir / "data"),
        RULEYARD_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        RULEYARD_ALLOW_LOCAL_SOURCES="true",
        RULEYARD_YARA_SYNC="true" if yara_sync else "false",
        # No periodic update run may touch repositories while the tests work on them.
        RULEYARD_UPDATE_INTERVAL_SECONDS="0",
    )
    with fresh_postgres_database() if backend == "postgres" else nullcontext() as database_url:
        if database_url:
            env["RULEYARD_DATABASE_URL"] = database_url
        log_path = workdir / "server.log"
        base_url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        try:
            wait_until_healthy(process, base_url, log_path)
            yield Server(
                backend=backend,
                yara_sync=yara_sync,
                base_url=base_url,
                env=env,
                log_path=log_path,
                admin_password=env["RULEYARD_ADMIN_PASSWORD"],
                process=process,
            )
        finally:
            stop(process)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    """The database backend of the servers; the tests run once per backend."""
    return request.param


@pytest.fixture(scope="session")
def server(backend, tmp_path_factory) -> Server:
    """The server most tests use: YARA Sync off, so valid revisions are activated at once."""
    with running_server(tmp_path_factory, backend, yara_sync=False) as started:
        yield started


@pytest.fixture(scope="session")
def sync_server(backend, tmp_path_factory) -> Server:
    """A second, independent server with YARA Sync on: new revisions wait for a publish."""
    with running_server(tmp_path_factory, backend, yara_sync=True) as started:
        yield started


def create_users(server: Server) -> dict[str, str]:
    """Creates the regular users alice and bob; returns every user's password, admin's included."""
    created = {"admin": server.admin_password}
    for name in ("alice", "bob"):
        created[name] = secrets.token_urlsafe(16)
        server.cli("user", "create", name, stdin=created[name] + "\n")
    return created


@pytest.fixture(scope="session")
def passwords(server) -> dict[str, str]:
    return create_users(server)


@pytest.fixture(scope="session")
def sync_passwords(sync_server) -> dict[str, str]:
    return create_users(sync_server)


def sdk_client(server: Server, passwords: dict[str, str], username: str) -> A1000:
    return A1000(host=server.base_url, username=username, password=passwords[username], verify=False)


@pytest.fixture(scope="session")
def admin(server, passwords) -> A1000:
    return sdk_client(server, passwords, "admin")


@pytest.fixture(scope="session")
def alice(server, passwords) -> A1000:
    return sdk_client(server, passwords, "alice")


@pytest.fixture(scope="session")
def bob(server, passwords) -> A1000:
    return sdk_client(server, passwords, "bob")


def token_session(server: Server, username: str, password: str) -> requests.Session:
    """A plain HTTP session with a token of its own, for Ruleyard's endpoints the SDK lacks."""
    response = requests.post(f"{server.base_url}/api-token-auth/",
                             data={"username": username, "password": password}, timeout=30)
    assert response.status_code == 200, response.text
    session = requests.Session()
    session.headers["Authorization"] = f"Token {response.json()['token']}"
    return session


@pytest.fixture(scope="session")
def alice_http(server, passwords) -> requests.Session:
    """A plain HTTP session authenticated as alice, for Ruleyard's own endpoints the SDK lacks."""
    session = token_session(server, "alice", passwords["alice"])
    yield session
    session.close()


def make_appliance(server: Server, passwords: dict[str, str]) -> Appliance:
    return Appliance(
        server=server,
        clients={name: sdk_client(server, passwords, name) for name in ("admin", "alice", "bob")},
        sessions={name: token_session(server, name, passwords[name]) for name in ("admin", "alice", "bob")},
    )


@pytest.fixture(scope="session")
def sync_off(server, passwords) -> Appliance:
    """The YARA Sync off server, with SDK clients and plain HTTP sessions for admin, alice and bob."""
    appliance = make_appliance(server, passwords)
    yield appliance
    appliance.close()


@pytest.fixture(scope="session")
def sync_on(sync_server, sync_passwords) -> Appliance:
    """The YARA Sync on server, with SDK clients and plain HTTP sessions for admin, alice and bob."""
    appliance = make_appliance(sync_server, sync_passwords)
    yield appliance
    appliance.close()


@pytest.fixture(params=["sync-off", "sync-on"])
def appliance(request, backend) -> Appliance:
    """Runs a test once against each YARA Sync mode. (`backend` is named so that pytest parametrizes
    the test by backend too: the fixture it returns is requested dynamically, out of pytest's sight.)"""
    return request.getfixturevalue(request.param.replace("-", "_"))


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Ruleyard SDK tests", "-c", "user.email=sdk-tests@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"},
    )


class Upstreams:
    """Makes fresh bare git repositories, each at its own `file://` URL.

    Kinds:
      - "main": HEAD is `main`; branches `main` and `feature`.
      - "develop": HEAD is `develop`, the only branch.
      - "unborn-head": HEAD names a branch that does not exist (`trunk`); the only branch is `master`.
    Each kind is built once with git and copied for every request, so URLs never repeat.
    """

    LAYOUTS = {
        "main": ("main", {"main": "main", "feature": "main"}),
        "develop": ("develop", {"develop": "main"}),
        "unborn-head": ("trunk", {"master": "main"}),
    }

    def __init__(self, root: Path):
        self._root = root
        self._templates: dict[str, Path] = {}
        self._count = 0

    def _template(self, kind: str) -> Path:
        if kind not in self._templates:
            head, branches = self.LAYOUTS[kind]
            work = self._root / f"work-{kind}"
            bare = self._root / f"template-{kind}.git"
            git("init", "-q", "-b", "main", str(work))
            (work / FIXTURE_RULE_PATH).parent.mkdir(parents=True)
            (work / FIXTURE_RULE_PATH).write_text(FIXTURE_RULE)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", "Add fixture rule", cwd=work)
            git("init", "-q", "--bare", "-b", head, str(bare))
            for branch, source in branches.items():
                git("push", "-q", str(bare), f"{source}:refs/heads/{branch}", cwd=work)
            self._templates[kind] = bare
        return self._templates[kind]

    def new(self, kind: str = "main") -> str:
        """Returns the `file://` URL of a new bare repository of the given kind."""
        self._count += 1
        path = self._root / f"upstream-{self._count}-{kind}.git"
        shutil.copytree(self._template(kind), path)
        return path.as_uri()


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory) -> Upstreams:
    return Upstreams(tmp_path_factory.mktemp("upstreams"))
