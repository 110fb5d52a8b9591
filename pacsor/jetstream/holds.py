"""The SCPs' holds on the studies they are receiving, kept in the PACSOR_HOLDS stream.

Each SCP process (a holder) writes the last state of its open associations that sent a study
on `pacsor.hold.<study>.<holder>`: the stream keeps one message per subject, so reading a
study's holds is reading the last message of each of its subjects. The completion handler
reads them to decide (pacsor.domain.completion); nothing else depends on them.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pacsor.domain.completion import Hold
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
        sub = await self._js.pull_subscribe(
            holds_filter(study_uid),
            stream=HOLDS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        holds: list[Hold] = []
        try:
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                for msg in await sub.fetch(min(remaining, 100), timeout=self._timeout):
                    remaining = msg.metadata.num_pending
                    try:
                        holds.append(msgspec.json.decode(msg.data, type=Hold))
                    except msgspec.MsgspecError as err:
                        log.error("unreadable hold skipped", extra={"error": str(err)})
        finally:
            await sub.unsubscribe()
        return holds
