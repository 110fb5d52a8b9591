"""What the broker says of pacsor's streams and durable consumers, for health and metrics."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from pacsor.jetstream.subjects import EVENTS_STREAM, object_store_stream
from pacsor.streams import stream_definitions


class ConsumerState(msgspec.Struct, frozen=True):
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int


class StreamState(msgspec.Struct, frozen=True):
    name: str
    present: bool
    messages: int = 0
    replicas: int = 0


class BrokerState(msgspec.Struct, frozen=True):
    connected: bool
    streams: list[StreamState]
    consumers: list[ConsumerState]  # the durable ones of the event streams
    events_last_sequence: int
    problems: list[str]


def _is_bucket(stream: str) -> bool:
    return stream == object_store_stream(stream.removeprefix(object_store_stream("")))


async def broker_state(nc: Client) -> BrokerState:
    """Every declared stream (present or not) and every durable consumer's backlog."""
    problems: list[str] = []
    streams: list[StreamState] = []
    consumers: list[ConsumerState] = []
    last_sequence = 0
    if not nc.is_connected:
        return BrokerState(False, [], [], 0, ["not connected to NATS"])
    js = nc.jetstream(timeout=5)
    for name in stream_definitions():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            streams.append(StreamState(name, False))
            problems.append(f"stream {name} is missing")
            continue
        except Exception as err:  # reported, not raised: health says what it could not read
            problems.append(f"stream {name}: {type(err).__name__}: {err}")
            continue
        streams.append(StreamState(name, True, info.state.messages, info.config.num_replicas or 1))
        if name == EVENTS_STREAM:
            last_sequence = info.state.last_seq
        if _is_bucket(name):
            continue
        for consumer in await js.consumers_info(name):
            if consumer.config.durable_name is None:
                continue  # ephemeral readers, such as the admin's projection
            consumers.append(
                ConsumerState(
                    stream=name,
                    consumer=consumer.name,
                    pending=consumer.num_pending or 0,
                    ack_pending=consumer.num_ack_pending or 0,
                    redelivered=consumer.num_redelivered or 0,
                )
            )
    return BrokerState(True, streams, consumers, last_sequence, problems)
