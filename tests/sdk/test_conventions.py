"""Authentication and path conventions the SDK relies on (API.md 1.1 and 1.3)."""

import pytest
import requests
from ReversingLabs.SDK.a1000 import A1000
from ReversingLabs.SDK.helper import BadRequestError, UnauthorizedError

from support import describe, expect_error, expect_status


def test_wrong_password_fails_the_sdk_login_with_400(server, passwords):
    with pytest.raises(BadRequestError) as error:
        A1000(host=server.base_url, username="alice", password=passwords["alice"] + "x", verify=False)
    assert error.value.response_object.status_code == 400


def test_unknown_user_fails_the_sdk_login_with_400(server):
    with pytest.raises(BadRequestError):
        A1000(host=server.base_url, username="nobody", password="whatever", verify=False)


def test_token_endpoint_accepts_json_too(server, passwords):
    response = requests.post(f"{server.base_url}/api-token-auth/",
                             json={"username": "bob", "password": passwords["bob"]}, timeout=30)
    token = expect_status(response, 200)["token"]
    client = A1000(host=server.base_url, token=token, verify=False)
    expect_status(client.get_yara_repositories(), 200)


def test_unknown_token_is_401(server):
    client = A1000(host=server.base_url, token="not-a-real-token", verify=False)
    expect_error(UnauthorizedError, client.get_yara_repositories)


def test_missing_token_is_401_with_a_token_challenge(server):
    response = requests.get(f"{server.base_url}/api/yara/repositories/", timeout=30)
    assert response.status_code == 401, describe(response)
    assert response.headers.get("WWW-Authenticate", "").startswith("Token"), describe(response)


@pytest.mark.parametrize("path", ["/api/yara/repositories", "/api/yara/repositories/", "/api//yara//repositories/"])
def test_paths_are_served_without_redirects(server, alice_http, path):
    response = alice_http.get(f"{server.base_url}{path}", allow_redirects=False, timeout=30)
    assert "results" in expect_status(response, 200), describe(response)
