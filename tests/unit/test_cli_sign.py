"""``dealflow sign``: headers a sender would send, and a one-line error for a bad secret."""

from __future__ import annotations

import pytest

from dealflow.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["sign", *argv])
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_it_prints_curl_header_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--secret", "whsec_c2VjcmV0", "--body", "{}", "--id", "msg_1")
    assert code == 0 and err == ""
    assert "-H webhook-id:msg_1" in out and "-H webhook-signature:v1," in out


@pytest.mark.parametrize(
    ("secret", "says"),
    [("", "a non-empty secret is required"), ("whsec_not base64!", "whsec_")],
)
def test_a_bad_secret_is_one_line_on_stderr_and_exit_2(
    capsys: pytest.CaptureFixture[str], secret: str, says: str
) -> None:
    code, out, err = run(capsys, "--secret", secret, "--body", "{}")
    assert code == 2 and out == ""
    assert err.startswith("dealflow sign: ") and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
