"""Answering NATS requests (core request/reply, not JetStream) on a few subjects.

Replicas share the work through a queue group: each request is answered once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("pacsor.requests")

Answer = Callable[[str, bytes], Awaitable[bytes]]


class Responders:
    """Subscriptions answering requests; `close()` stops answering."""

    def __init__(self, subscriptions: list[Subscription]) -> None:
        self._subscriptions = subscriptions

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions = []


async def answer_requests(
    nc: Client, subjects: Sequence[str], queue: str, answer: Answer
) -> Responders:
    """Answer every request on `subjects` with `answer(subject, body)`; answering once this
    returns (the server knows the subscriptions)."""

    async def on_request(msg: Msg) -> None:
        try:
            reply = await answer(msg.subject, msg.data)
        except Exception:
            log.exception("request failed", extra={"subject": msg.subject})
            reply = b'{"status": "error", "reason": "internal error; see the logs"}'
        if msg.reply:
            await msg.respond(reply)

    subscriptions = [await nc.subscribe(s, queue=queue, cb=on_request) for s in subjects]
    await nc.flush()
    log.info("answering requests", extra={"subjects": list(subjects)})
    return Responders(subscriptions)
