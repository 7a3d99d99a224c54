"""The token checks and the failure throttle shared by the service and the gateway."""

from __future__ import annotations

import pytest

from text2img.auth import FailureThrottle, bearer_from_header, load_token, token_matches
from text2img.errors import UserError

TOKEN = "s3cret-token-0123456789"


def test_load_token_prefers_value_then_file(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert load_token(None, f) == TOKEN
    assert load_token("another-token-abcdefgh", f) == "another-token-abcdefgh"
    assert load_token(None, None) is None


@pytest.mark.parametrize("bad", ["short", "   "])
def test_load_token_rejects_weak_tokens(bad):
    with pytest.raises(UserError):
        load_token(bad, None)


def test_load_token_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read the API token file"):
        load_token(None, tmp_path / "nope")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer   {TOKEN}", TOKEN),
        (f"Basic {TOKEN}", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_from_header(header, expected):
    assert bearer_from_header(header) == expected


def test_token_matches():
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1], TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("ünïcode-token-xxxxxxxx", TOKEN)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_throttle_blocks_after_max_failures_and_doubles():
    clock = Clock()
    th = FailureThrottle(max_failures=3, window_s=60, block_s=10, clock=clock)
    for _ in range(2):
        th.failure("a")
        assert th.retry_after("a") is None
    th.failure("a")
    assert th.retry_after("a") == pytest.approx(10)
    assert th.retry_after("b") is None  # other clients unaffected
    clock.t += 10.5
    assert th.retry_after("a") is None
    for _ in range(3):
        th.failure("a")
    assert th.retry_after("a") == pytest.approx(20)  # second offence: doubled


def test_throttle_window_expires_and_success_resets():
    clock = Clock()
    th = FailureThrottle(max_failures=3, window_s=60, block_s=10, clock=clock)
    th.failure("a")
    th.failure("a")
    clock.t += 61
    th.failure("a")
    assert th.retry_after("a") is None  # old failures fell out of the window
    th.failure("a")
    th.success("a")
    th.failure("a")
    assert th.retry_after("a") is None


def test_throttle_memory_is_bounded():
    th = FailureThrottle(max_failures=2, max_clients=100, clock=Clock())
    for i in range(1000):
        th.failure(f"client-{i}")
    assert len(th._records) == 100
