"""The search attributes operators filter deals by in the Temporal Web UI."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

DEAL_ID = SearchAttributeKey.for_keyword("DealId")
PIPELINE_ID = SearchAttributeKey.for_keyword("PipelineId")
DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
DEAL_STATUS = SearchAttributeKey.for_keyword("DealStatus")
IS_ROTTING = SearchAttributeKey.for_bool("IsRotting")

SEARCH_ATTRIBUTES: dict[str, str] = {
    "DealId": "Keyword",
    "PipelineId": "Keyword",
    "DealStage": "Keyword",
    "DealStatus": "Keyword",
    "IsRotting": "Bool",
}


class Upserts:
    """Whether deal workflows keep their search attributes current.

    On by default. The time-skipping test server cannot register custom search attributes, so
    workflow tests there switch it off for the whole worker process (it is static per process,
    so replay stays deterministic).
    """

    enabled: bool = True
