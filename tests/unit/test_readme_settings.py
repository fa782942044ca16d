"""Every setting is in the README's configuration table (a new one cannot land undocumented)."""

from __future__ import annotations

from pathlib import Path

from dealflow.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    table = [line for line in README.read_text("utf-8").splitlines() if line.startswith("| `")]
    documented = " ".join(table)
    missing = [
        f"DEALFLOW_{name.upper()}"
        for name in Settings.model_fields
        if f"`DEALFLOW_{name.upper()}`" not in documented
    ]
    assert not missing, f"not in README's configuration table: {', '.join(missing)}"
