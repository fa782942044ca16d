"""Settings from ``DEALFLOW_*`` environment variables (and an optional ``.env``)."""

from __future__ import annotations

import ipaddress
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from domain.durations import Duration

DATA_DIR = Path(".dealflow")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEALFLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = DATA_DIR
    database_url: str = ""
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_api_key: str | None = None
    task_queue: str = "dealflow"
    temporal_ui_port: int = Field(8233, ge=1, le=65535)
    temporal_grpc_port: int = Field(7233, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535)
    admin_token: str | None = Field(None, min_length=16)
    secret_key: str | None = Field(None, min_length=16)
    redis_url: str | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_json_depth: int = Field(64, ge=2, le=10_000)
    webhook_tolerance: Duration = "PT5M"  # type: ignore[assignment]
    global_rate_per_second: float = Field(5000, gt=0)
    global_rate_burst: int = Field(10000, gt=0)
    auth_failure_limit: int = Field(20, ge=1)
    auth_block: Duration = "PT5M"  # type: ignore[assignment]
    relay_batch_size: int = Field(500, ge=1, le=10_000)
    relay_interval: Duration = "PT0.2S"  # type: ignore[assignment]
    smtp_host: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = "dealflow@localhost"
    integrations: dict[str, str] = Field(default_factory=dict)
    outbound_timeout: Duration = "PT10S"  # type: ignore[assignment]
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")
    # Event processing: alerts, circuit breakers, poison events, reconciliation.
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None  # whsec_…: alerts are signed the Standard Webhooks way
    alert_failure_rate: float = Field(0.25, gt=0, le=1)
    alert_failure_window: Duration = "PT5M"  # type: ignore[assignment]
    alert_failure_min_events: int = Field(20, ge=1)
    alert_max_attempts: int = Field(12, ge=1)  # deliveries of one alert before it is abandoned
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_window: Duration = "PT1M"  # type: ignore[assignment]
    breaker_cooldown: Duration = "PT30S"  # type: ignore[assignment]
    # While a breaker is open: ``wait`` (a durable timer, then the call again) or ``fail`` at once.
    breaker_fallback: str = Field("wait", pattern="^(wait|fail)$")
    breaker_max_wait: Duration = "P1D"  # type: ignore[assignment]
    relay_max_attempts: int = Field(5, ge=1)
    reconcile_stuck_after: Duration = "PT10M"  # type: ignore[assignment]
    reconcile_every: Duration = "PT5M"  # type: ignore[assignment]

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_alert_url(cls, value: str | None) -> str | None:
        if value:
            from urllib.parse import urlsplit

            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an http:// or https:// URL is required")
        return value

    @field_validator("alert_webhook_secret")
    @classmethod
    def _check_alert_secret(cls, value: str | None) -> str | None:
        if value:
            from domain.signatures import sign

            sign("standard", value, b"{}", delivery_id="check", timestamp=0)  # ValueError if bad
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dealflow.db').resolve()}"

    @property
    def embedded_temporal(self) -> bool:
        return not self.temporal_address

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_grpc_port}"


def describe_error(exc: ValidationError) -> str:
    """One line naming the first bad setting by its environment variable."""
    parts = []
    for err in exc.errors():
        name = "DEALFLOW_" + "_".join(str(p) for p in err["loc"]).upper()
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and value != "" else ""
        parts.append(f"{name}: {err['msg']}{shown}")
    return "invalid setting " + "; ".join(parts)


def load_settings() -> Settings:
    """Load settings or stop the process with one line naming what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"dealflow: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"dealflow: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
