"""Side effects of automations: notifications, tasks, integration calls, owner assignment.

In a pipeline in test mode every side effect that leaves dealflow is recorded, not executed.
"""

from __future__ import annotations

import logging
import smtplib
from datetime import datetime
from email.message import EmailMessage

import httpx
from sqlalchemy import func
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import integrations
from activities.templates import render
from dealflow.settings import Settings
from store.db import Database
from store.models import Deal, Task
from store.upsert import insert_ignore
from workflows.messages import EffectInput, EffectResult

log = logging.getLogger("dealflow.effects")


class EffectActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="run_effect")
    def run_effect(self, inp: EffectInput) -> EffectResult:
        effect = inp.effect
        data = effect.data
        context = data.get("context", {})
        if effect.kind == "create_task":
            return self._create_task(inp)
        if effect.kind == "assign_owner":
            return EffectResult(executed=True, owner=self._least_loaded(data["among"]))
        if inp.test_mode:
            log.info(
                "test mode: %s recorded, not executed",
                effect.kind,
                extra={"deal_id": inp.deal_id, "effect": effect.key},
            )
            return EffectResult(executed=False, detail=f"test mode: {effect.kind} not sent")
        if effect.kind == "notify":
            return self._notify(inp, render(data["template"], context))
        if effect.kind == "call_integration":
            return self._call_integration(inp)
        raise ApplicationError(f"unknown effect {effect.kind}", non_retryable=True)

    def _notify(self, inp: EffectInput, text: str) -> EffectResult:
        data = inp.effect.data
        recipients = data["to"] if isinstance(data["to"], list) else [data["to"]]
        channel = data.get("channel", "log")
        if channel == "log":
            log.info(
                "notify %s: %s",
                ", ".join(recipients),
                text,
                extra={"deal_id": inp.deal_id, "effect": inp.effect.key},
            )
            return EffectResult(executed=True, detail=f"logged for {', '.join(recipients)}")
        if channel == "webhook":
            for url in recipients:
                self._post(
                    url,
                    {"deal_id": inp.deal_id, "text": text, "effect": inp.effect.key},
                    idempotency_key=inp.effect.key,
                )
            return EffectResult(executed=True, detail=f"posted to {len(recipients)} endpoint(s)")
        if channel == "email":
            if not self.settings.smtp_host:
                raise ApplicationError(
                    "e-mail notification without DEALFLOW_SMTP_HOST", non_retryable=True
                )
            msg = EmailMessage()
            msg["From"] = self.settings.smtp_from
            msg["To"] = ", ".join(recipients)
            msg["Subject"] = f"[dealflow] {data['template']}"
            msg["Message-ID"] = f"<{inp.effect.key}@dealflow>"
            msg.set_content(text)
            with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port, timeout=10) as smtp:
                smtp.send_message(msg)
            return EffectResult(executed=True, detail=f"mailed {len(recipients)} recipient(s)")
        raise ApplicationError(f"unknown channel {channel}", non_retryable=True)

    def _post(self, url: str, body: dict, *, idempotency_key: str) -> httpx.Response:
        timeout = self.settings.outbound_timeout.total_seconds()
        try:
            response = httpx.post(
                url, json=body, timeout=timeout, headers={"Idempotency-Key": idempotency_key}
            )
        except httpx.HTTPError as exc:
            raise ApplicationError(f"{url}: {exc}", type="unreachable") from exc
        if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 429):
            raise ApplicationError(
                f"{url} answered {response.status_code}", type="rejected", non_retryable=True
            )
        if response.status_code >= 400:
            raise ApplicationError(f"{url} answered {response.status_code}", type="failed")
        return response

    def _call_integration(self, inp: EffectInput) -> EffectResult:
        name = inp.effect.data["integration"]
        url = self.settings.integrations.get(name)
        if url is None:
            raise ApplicationError(
                f"integration '{name}' is not configured (DEALFLOW_INTEGRATIONS)",
                non_retryable=True,
            )
        body = {"deal": inp.effect.data.get("context", {}), **inp.effect.data.get("payload", {})}
        # Through the integration's circuit breaker (shared by all workers). The idempotency key
        # is the effect's key: stable across retries, replays and continue-as-new.
        response = integrations.call(
            integrations.breaker_for(self.db, self.settings),
            self.settings,
            name,
            url,
            body,
            key=inp.effect.key,
        )
        return EffectResult(executed=True, detail=f"{name} answered {response.status_code}")

    def _create_task(self, inp: EffectInput) -> EffectResult:
        data = inp.effect.data
        title = render(data["template"], data.get("context", {}))
        with self.db.session() as session:
            insert_ignore(
                session,
                Task,
                [
                    {
                        "id": inp.effect.key,
                        "deal_id": inp.deal_id,
                        "template": data["template"],
                        "title": title,
                        "due_at": (
                            datetime.fromisoformat(data["due_at"]) if data.get("due_at") else None
                        ),
                        "status": "open",
                    }
                ],
                ["id"],
            )
            session.commit()
        return EffectResult(executed=True, detail=f"task {inp.effect.key}")

    def _least_loaded(self, among: list[str]) -> str:
        with self.db.session() as session:
            rows = session.exec(
                select(Deal.owner, func.count())
                .where(Deal.status == "open", Deal.owner.in_(among))  # type: ignore[union-attr]
                .group_by(Deal.owner)
            ).all()
        load = {owner: count for owner, count in rows}
        return min(among, key=lambda s: (load.get(s, 0), among.index(s)))
