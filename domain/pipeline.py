"""The pipeline definition an admin writes: stages, movement rules and automations.

These models only describe shape (types, ranges, formats). Cross-field checks that need the whole
pipeline (duplicate keys, unknown stage references, automation cycles) live in
``domain.validation`` so that every problem can be reported at once.

What an admin submits may not hold control characters (``domain.text``: none at all in keys,
subjects and field names, none but tab and newline in names, descriptions and templates; a NUL
is not a PostgreSQL string). That check runs when a submission is validated with
:data:`INPUT_CONTEXT` (``domain.validation.parse_and_validate`` does), not when a stored version
or a deal workflow's snapshot is read back: a version saved before the check existed stays
readable, and the workflows running on it keep replaying.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo

from domain.durations import Duration
from domain.text import check_id_text, check_nul_free, check_text

INPUT_CONTEXT = {"pipeline_input": True}
"""The validation context of a submitted pipeline: ``model_validate(data, context=INPUT_CONTEXT)``
also refuses control characters."""


def _on_input(check: Any) -> AfterValidator:
    """``check`` (one of ``domain.text``'s) when validating a submission, nothing otherwise."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        context = info.context
        if isinstance(context, dict) and context.get("pipeline_input"):
            return check(value)
        return value

    return AfterValidator(validate)


NoControl = _on_input(check_text)
"""``domain.text.NoControl`` for a submission: no C0 control character but tab and newline."""
NoControlAtAll = _on_input(check_id_text)
"""``domain.text.NoControlAtAll`` for a submission: no control character at all."""
NulFreeJson = _on_input(check_nul_free)
"""``domain.text.NulFreeJson`` for a submission: no NUL in any key or string."""

StageKey = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), NoControlAtAll
]
Subject = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoControlAtAll
]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoControl
]
"""A pipeline's, a stage's or an automation's name: one line or several, no other control
character (PostgreSQL text cannot hold NUL)."""
Text = Annotated[str, NoControl]
Word = Annotated[str, NoControlAtAll]
"""A field name, an integration, a recipient, an icon: no control character at all."""
Color = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SlaSpec(Model):
    target: Duration
    warn_at: float = Field(0.8, ge=0, le=1)


class ValidationRule(Model):
    """A safe expression (JMESPath) over the deal document that must be truthy to enter a stage.

    The document is ``{"value", "currency", "owner", "stage", "fields": {...}}``, e.g.
    ``{"expr": "value > `0`", "message": "a deal needs a value"}``.
    """

    expr: Annotated[str, Field(min_length=1, max_length=2000), NoControl]
    message: Text | None = None


class ApprovalSpec(Model):
    approvers: list[Subject] = Field(min_length=1)
    mode: Literal["any", "all"] = "any"
    timeout: Duration | None = None
    on_timeout: Literal["escalate", "reject", "approve"] = "escalate"
    escalate_to: list[Subject] = Field(default_factory=list)


class StageSpec(Model):
    key: StageKey
    name: Name
    probability: float = Field(ge=0, le=100)
    sla: SlaSpec | None = None
    rotting: Duration | None = None
    color: Color | None = None
    icon: Annotated[str, Field(max_length=64), NoControlAtAll] | None = None
    required_fields: list[Word] = Field(default_factory=list)
    validation: list[ValidationRule] = Field(default_factory=list)
    approval: ApprovalSpec | None = None
    outcome: Literal["won", "lost"] | None = None


Permission = Literal["allow", "deny"] | list[Subject]


class RulesSpec(Model):
    skip: Permission = "deny"
    backward: Permission = "allow"


TriggerOn = Literal[
    "stage_entered",
    "stage_exited",
    "field_changed",
    "time_in_stage",
    "sla_warning",
    "sla_breached",
    "rotting",
]


class TriggerSpec(Model):
    on: TriggerOn
    stage: StageKey | None = None
    field: Word | None = None
    after: Duration | None = None


class MoveToStage(Model):
    do: Literal["move_to_stage"]
    stage: StageKey


class Notify(Model):
    do: Literal["notify"]
    channel: Literal["log", "webhook", "email"] = "log"
    to: Word | list[Word]
    template: Text


class CreateTask(Model):
    do: Literal["create_task"]
    template: Text
    due_in: Duration | None = None


class AssignOwner(Model):
    do: Literal["assign_owner"]
    strategy: Literal["round_robin", "least_loaded", "by_field"] = "round_robin"
    among: list[Subject] = Field(default_factory=list)
    field: Word | None = None


class SetField(Model):
    do: Literal["set_field"]
    field: Annotated[str, Field(min_length=1), NoControlAtAll]
    value: Annotated[Any, NulFreeJson] = None


class CallIntegration(Model):
    do: Literal["call_integration"]
    integration: Annotated[str, Field(min_length=1), NoControlAtAll]
    payload: Annotated[dict[str, Any], NulFreeJson] | None = None


Action = Annotated[
    MoveToStage | Notify | CreateTask | AssignOwner | SetField | CallIntegration,
    Field(discriminator="do"),
]


class AutomationSpec(Model):
    name: Name
    trigger: TriggerSpec
    conditions: list[ValidationRule] = Field(default_factory=list)
    actions: list[Action] = Field(min_length=1)


class BusinessCalendar(Model):
    """Business hours an SLA clock runs in (optional; without it SLAs count wall-clock time)."""

    timezone: Word = "UTC"
    weekdays: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4]
    )
    start: str = Field("09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field("17:00", pattern=r"^([01]\d|2[0-4]):[0-5]\d$")
    holidays: list[Word] = Field(default_factory=list)


class PipelineSpec(Model):
    """What an admin POSTs to ``/v1/pipelines`` (and PUTs for a new version)."""

    name: Name
    description: Text | None = None
    # Required, as the contract lists them (a ``template`` fills in type and probability_mode).
    type: Literal["sales", "support", "custom"]
    currency: Currency
    probability_mode: Literal["stage", "manual"]
    template: Word | None = None
    stages: list[StageSpec] = Field(default_factory=list)
    rules: RulesSpec = Field(default_factory=RulesSpec)
    automations: list[AutomationSpec] = Field(default_factory=list)
    calendar: BusinessCalendar | None = None

    def stage(self, key: str) -> StageSpec | None:
        for stage in self.stages:
            if stage.key == key:
                return stage
        return None

    def index_of(self, key: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.key == key:
                return i
        return -1


class PipelineSnapshot(Model):
    """One immutable version of a pipeline, as a deal workflow carries it."""

    pipeline_id: str
    version: int
    spec: PipelineSpec
    test_mode: bool = False
    go_live_at: datetime | None = None
