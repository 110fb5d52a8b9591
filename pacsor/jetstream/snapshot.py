"""Reading what a stream holds now on some subjects, through a short-lived consumer."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


async def messages_now(
    js: JetStreamContext,
    stream: str,
    filter_subject: str,
    timeout: float,
    deliver: DeliverPolicy = DeliverPolicy.ALL,
    batch: int = 1000,
    start_sequence: int | None = None,
) -> AsyncGenerator[Msg, None]:
    """Every message on `filter_subject` that the stream holds when called, oldest first.

    An ephemeral, in-memory consumer without acknowledgements: nothing is left behind on the
    server once read (it goes away after 30 s unused if the reader dies).
    """
    sub = await js.pull_subscribe(
        filter_subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_sequence else deliver,
            opt_start_seq=start_sequence,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        ),
    )
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(remaining, batch), timeout=timeout):
                remaining = msg.metadata.num_pending
                yield msg
    finally:
        await sub.unsubscribe()
