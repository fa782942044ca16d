"""A bad setting stops the process with one line naming the variable (exit 2), never a
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dealflow.settings import load_settings

BAD = [
    ("DEALFLOW_API_PORT", "abc", "integer"),
    ("DEALFLOW_BREAKER_FALLBACK", "maybe", "wait|fail"),
    ("DEALFLOW_BREAKER_MAX_WAIT", "forever", "ISO 8601 duration"),
    ("DEALFLOW_ALERT_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
    ("DEALFLOW_ALERT_WEBHOOK_URL", "notaurl", "http:// or https://"),
    ("DEALFLOW_ALERT_FAILURE_RATE", "1.5", "less than or equal to 1"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD)
def test_a_bad_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file around
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as done:
        load_settings()
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dealflow: invalid setting {name}: ") and says in err, err
    assert repr(value) in err


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEALFLOW_ALERT_WEBHOOK_URL", "https://alerts.example.com/hook")
    monkeypatch.setenv("DEALFLOW_BREAKER_FALLBACK", "fail")
    settings = load_settings()
    assert settings.alert_webhook_url == "https://alerts.example.com/hook"
    assert settings.breaker_fallback == "fail"
