"""Fixtures for the SDK end-to-end suite.

A session starts the real `ruleyard serve` binary once per database backend (SQLite always,
PostgreSQL too when RULEYARD_TEST_POSTGRES_URL is set) with YARA Sync off, and, when a test asks for
it, a second one with YARA Sync on, a third one for the update job's tests and a fourth one with a small
match cap (each server has its own data directory and database, so they are independent single-node
installations). It creates the
users the tests act as and builds small
`file://` git repositories for the server's connection tests and imports, and, for the update job's
tests, a `git://` upstream that can be made to stall.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000

from support import (CONNECT_TIMEOUT_SECONDS, FETCH_TIMEOUT_SECONDS, FIXTURE_RULE, FIXTURE_RULE_PATH,
                     JOB_LEASE_SECONDS, MATCH_CAP, Appliance)

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 60
POSTGRES_URL = os.environ.get("RULEYARD_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

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

    def crash_and_restart(self) -> None:
        """Kills the server (SIGKILL: no shutdown of any kind) and starts it again on the same address, data
        directory and database; returns once it is healthy. Its node name (host name and port) stays the same."""
        self.process.kill()
        self.process.wait()
        self.process = serve(self.env, self.log_path, "ab")
        wait_until_healthy(self.process, self.base_url, self.log_path)

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
def running_server(tmp_path_factory, backend: str, yara_sync: bool, name: str | None = None,
                   extra_env: dict[str, str] | None = None):
    """Starts `ruleyard serve` on a fresh data directory (and a fresh database on PostgreSQL), waits
    until it is healthy, yields it and stops it. YARA Sync is always set explicitly: the server's
    default depends on the backend (off on SQLite, on with PostgreSQL)."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"server binary {binary} does not exist; build it with `cargo build` or set RULEYARD_BIN")

    workdir = tmp_path_factory.mktemp(name or f"ruleyard-{backend}-sync-{'on' if yara_sync else 'off'}")
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
        # A stalled upstream fails its fetch in seconds rather than the default two minutes.
        RULEYARD_FETCH_TIMEOUT_SECONDS=str(FETCH_TIMEOUT_SECONDS),
        RULEYARD_CONNECT_TIMEOUT_SECONDS=str(CONNECT_TIMEOUT_SECONDS),
        **(extra_env or {}),
    )
    with fresh_postgres_database() if backend == "postgres" else nullcontext() as database_url:
        if database_url:
            env["RULEYARD_DATABASE_URL"] = database_url
        log_path = workdir / "server.log"
        started = Server(
            backend=backend,
            yara_sync=yara_sync,
            base_url=f"http://127.0.0.1:{port}",
            env=env,
            log_path=log_path,
            admin_password=env["RULEYARD_ADMIN_PASSWORD"],
            process=serve(env, log_path, "wb"),
        )
        try:
            wait_until_healthy(started.process, started.base_url, log_path)
            yield started
        finally:
            stop(started.process)  # the one running now: a test may have restarted it


def serve(env: dict, log_path: Path, mode: str) -> subprocess.Popen:
    with open(log_path, mode) as log:
        return subprocess.Popen([str(server_binary()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)



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


@pytest.fixture(scope="session")
def job_server(backend, tmp_path_factory) -> Server:
    """A third, independent server (YARA Sync off) for the update job's tests. The cadence and the runs
    are global state: there no other test starts runs or adds repositories that runs would fetch, so a
    run's repositories, progress and final state are exactly what the test made. Its job lease is short,
    so a run of a few seconds must renew it."""
    with running_server(tmp_path_factory, backend, yara_sync=False, name=f"ruleyard-{backend}-job",
                        extra_env={"RULEYARD_JOB_LEASE_SECONDS": str(JOB_LEASE_SECONDS)}) as started:
        yield started


@pytest.fixture(scope="session")
def capped_server(backend, tmp_path_factory) -> Server:
    """A fourth, independent server (YARA Sync off) whose match cap is MATCH_CAP samples, for the `capped`
    status (BEHAVIOUR.md 4); on the others the default cap is far beyond what the tests scan."""
    with running_server(tmp_path_factory, backend, yara_sync=False, name=f"ruleyard-{backend}-capped",
                        extra_env={"RULEYARD_MATCH_CAP": str(MATCH_CAP)}) as started:
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


@pytest.fixture(scope="session")
def job(job_server) -> Appliance:
    """The update job's server, with SDK clients and plain HTTP sessions for admin, alice and bob."""
    appliance = make_appliance(job_server, create_users(job_server))
    yield appliance
    appliance.close()


@pytest.fixture(scope="session")
def capped(capped_server) -> Appliance:
    """The capped server, with SDK clients and plain HTTP sessions for admin, alice and bob."""
    appliance = make_appliance(capped_server, create_users(capped_server))
    yield appliance
    appliance.close()


@pytest.fixture(params=["sync-off", "sync-on"])
def appliance(request, backend) -> Appliance:
    """Runs a test once against each YARA Sync mode. (`backend` is named so that pytest parametrizes
    the test by backend too: the fixture it returns is requested dynamically, out of pytest's sight.)"""
    return request.getfixturevalue(request.param.replace("-", "_"))


def git(*args: str, cwd: Path | None = None) -> str:
    """Runs git without any user or system configuration; returns its standard output."""
    return subprocess.run(
        ["git", "-c", "user.name=Ruleyard SDK tests", "-c", "user.email=sdk-tests@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"},
    ).stdout


class Upstreams:
    """Makes fresh bare git repositories, each at its own `file://` URL.

    Kinds:
      - "main": HEAD is `main`; branches `main` and `feature`.
      - "develop": HEAD is `develop`, the only branch.
      - "unborn-head": HEAD names a branch that does not exist (`trunk`); the only branch is `master`.
    Each kind is built once with git and copied for every request, so URLs never repeat. `create` makes
    one with the files a test gives, and `commit` pushes changes to any of them.
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

    def create(self, files: dict[str, str | bytes]) -> str:
        """Returns the `file://` URL of a new bare repository whose branch `main` (its HEAD) has one
        commit holding `files` (path: text, or bytes written as they are)."""
        self._count += 1
        work = self._root / f"work-{self._count}"
        bare = self._root / f"upstream-{self._count}-custom.git"
        git("init", "-q", "-b", "main", str(work))
        self._write(work, files)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Add rule files", cwd=work)
        git("init", "-q", "--bare", "-b", "main", str(bare))
        git("push", "-q", str(bare), "main:refs/heads/main", cwd=work)
        return bare.as_uri()

    def commit(self, url: str, files: dict[str, str | bytes | None]) -> str:
        """Pushes one commit onto `main` of the upstream at `url`: writes the files given with content and
        deletes those given as None. Returns the new commit's id."""
        self._count += 1
        work = self._root / f"work-{self._count}"
        git("clone", "-q", "-b", "main", url, str(work))
        self._write(work, files)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "Change rule files", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).strip()

    @staticmethod
    def path(url: str) -> Path:
        """The directory of the upstream at a `file://` URL."""
        return Path(unquote(urlsplit(url).path))

    @staticmethod
    def _write(work: Path, files: dict[str, str | bytes | None]) -> None:
        for relative, content in files.items():
            target = work / relative
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                # newline="" keeps the text exactly as given (no platform line endings).
                target.write_text(content, newline="")


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory) -> Upstreams:
    return Upstreams(tmp_path_factory.mktemp("upstreams"))


class StallingUpstream:
    """A bare git repository served by `git daemon` at a `git://` URL until `stall()`. From then on the
    same port accepts connections and never answers, so a fetch from it lasts until the server's
    timeout. It counts the connections it holds and tells whether the server hung up on them."""

    def __init__(self, bare: Path):
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}/{bare.name}"
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={bare.parent}", str(bare.parent)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so that close() ends its children too
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    pytest.fail(f"git daemon did not listen on port {self.port}")
                time.sleep(0.02)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def stall(self) -> None:
        """Stops the daemon and listens in its place without ever answering."""
        self._stop_daemon()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:  # a daemon child serving a last connection may still hold the port
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.02)
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._thread = threading.Thread(target=self._hold, name=f"stall-{self.port}", daemon=True)
        self._thread.start()

    def _hold(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(connection)

    def wait_for_connection(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.connections == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing connected to the stalled upstream {self.url} within {timeout}s")
            time.sleep(0.02)

    def server_hung_up(self, timeout: float) -> bool:
        """Whether the peer closed every connection held, within `timeout` seconds (reading and
        dropping what it sent)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            held = list(self._held)
        for connection in held:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                connection.settimeout(remaining)
                try:
                    if connection.recv(65536) == b"":
                        break
                except TimeoutError:
                    return False
                except OSError:  # reset by the peer: closed too
                    break
        return True

    def _stop_daemon(self) -> None:
        if self._daemon.poll() is None:
            try:
                os.killpg(self._daemon.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        stop(self._daemon)

    def close(self) -> None:
        self._closed.set()
        self._stop_daemon()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()
            self._held.clear()


@pytest.fixture
def stalling_upstream(upstreams, tmp_path) -> StallingUpstream:
    """A `git://` upstream with the fixture rule file, served until the test calls `stall()`."""
    served = tmp_path / "served"
    served.mkdir()
    bare = served / "stalling.git"
    shutil.move(Upstreams.path(upstreams.new()), bare)
    upstream = StallingUpstream(bare)
    yield upstream
    upstream.close()
