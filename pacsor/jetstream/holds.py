"""The SCPs' holds on the studies they are receiving, kept in the PACSOR_HOLDS stream.

Each SCP process (a holder) writes the last state of its open associations that sent a study
on `pacsor.hold.<study>.<holder>`: the stream keeps one message per subject, so reading a
study's holds is reading the last message of each of its subjects. The completion handler
reads them to decide (pacsor.domain.completion); nothing else depends on them.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from pacsor.domain.completion import Hold
from pacsor.jetstream.snapshot import messages_now
from pacsor.jetstream.subjects import HOLDS_STREAM, hold_subject, holds_filter

log = logging.getLogger("pacsor.jetstream.holds")


class Holds:
    def __init__(self, js: JetStreamContext, timeout: float = 10.0) -> None:
        self._js = js
        self._timeout = timeout

    async def put(self, study_uid: str, hold: Hold) -> None:
        await self._js.publish(
            hold_subject(study_uid, hold.holder),
            msgspec.json.encode(hold),
            timeout=self._timeout,
            stream=HOLDS_STREAM,
        )

    async def of_study(self, study_uid: str) -> list[Hold]:
        holds: list[Hold] = []
        feed = messages_now(
            self._js,
            HOLDS_STREAM,
            holds_filter(study_uid),
            self._timeout,
            DeliverPolicy.LAST_PER_SUBJECT,
            batch=100,
        )
        async with contextlib.aclosing(feed) as messages:
            async for msg in messages:
                try:
                    holds.append(msgspec.json.decode(msg.data, type=Hold))
                except msgspec.MsgspecError as err:
                    log.error("unreadable hold skipped", extra={"error": str(err)})
        return holds
