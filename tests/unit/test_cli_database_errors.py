"""A database the commands cannot reach is one line naming it (password hidden), exit 1."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dealflow.cli import main
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """``api`` and ``worker`` set up the process's logging; put the test run's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("command", [["migrate"], ["keys", "list"], ["worker"], ["api"]])
def test_an_unreachable_database_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"postgresql+psycopg://dealflow:s3cret@127.0.0.1:{free_port()}/dealflow"
    monkeypatch.setenv("DEALFLOW_DATABASE_URL", url)
    monkeypatch.setenv("DEALFLOW_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dealflow: cannot use the database "), err
    assert "s3cret" not in err[0] and "127.0.0.1" in err[0]
