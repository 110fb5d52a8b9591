"""The object-store buckets: pipelined writes in the standard layout, streamed reads."""

from __future__ import annotations

import os
from io import BytesIO

import pytest
from nats.aio.client import Client

from pacsor.jetstream.blobs import BlobError, BlobNotFound, BlobStore, sha256_digest
from pacsor.jetstream.subjects import INSTANCES_BUCKET, RESULTS_BUCKET


async def test_objects_are_readable_by_the_standard_object_store_client(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(nc, js, RESULTS_BUCKET)
    data = os.urandom(3 * 512 * 1024 + 17)  # several chunks and a short last one
    info = await store.put("1.2.3/default/1/1.2.3.4", data)
    assert info.chunks == 4 and info.size == len(data)

    # nats-py's ObjectStore follows the same layout as the `nats object` CLI.
    standard = await js.object_store(RESULTS_BUCKET)
    assert (await standard.get("1.2.3/default/1/1.2.3.4")).data == data
    assert b"".join([c async for c in store.chunks("1.2.3/default/1/1.2.3.4")]) == data


async def test_rewriting_replaces_and_identical_bytes_are_kept(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(nc, js, RESULTS_BUCKET)
    first = await store.put("a/b", b"one" * 1000)
    assert await store.put("a/b", b"one" * 1000) == first  # same bytes: nothing written
    second = await store.put("a/b", b"two" * 1000)
    assert second.nuid != first.nuid
    assert await store.get("a/b") == b"two" * 1000
    state = (await js.stream_info(f"OBJ_{RESULTS_BUCKET}")).state
    assert state.messages == 2  # the old chunks were purged: one chunk, one metadata


async def test_missing_and_corrupt_objects_are_errors(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(nc, js, RESULTS_BUCKET)
    with pytest.raises(BlobNotFound):
        await store.get("no/such")
    info = await store.put("c/d", b"x" * 100)
    # Replace the chunk with other bytes behind the store's back.
    await js.purge_stream(f"OBJ_{RESULTS_BUCKET}", subject=f"$O.{RESULTS_BUCKET}.C.{info.nuid}")
    await js.publish(f"$O.{RESULTS_BUCKET}.C.{info.nuid}", b"y" * 100)
    with pytest.raises(BlobError, match="digest mismatch"):
        await store.get("c/d")


async def test_a_named_object_is_stored_once_and_replaces_a_deletion_marker(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(nc, js, INSTANCES_BUCKET)
    data = os.urandom(3 * 512 * 1024 + 5)
    digest = sha256_digest(data)

    async def publish() -> bool:
        written = await store.publish_named("s/1", BytesIO(data), digest, len(data))
        return await written.stored()

    assert await publish() is True
    assert (await (await js.object_store(INSTANCES_BUCKET)).get("s/1")).data == data
    messages = (await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")).state.messages
    assert messages == 4 + 1

    # The same bytes again, at any time: the stored object is kept, the new chunks purged.
    assert await publish() is False
    assert (await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")).state.messages == messages
    assert await store.get("s/1") == data

    # Deleted (a marker in place of its metadata), then published again: stored again.
    assert await store.delete("s/1")
    assert await publish() is True
    assert await store.get("s/1") == data
    assert (await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")).state.messages == messages


async def test_a_named_object_read_short_is_refused_and_purged(nc: Client) -> None:
    js = nc.jetstream()
    store = BlobStore(nc, js, INSTANCES_BUCKET)
    data = os.urandom(700_000)
    with pytest.raises(BlobError, match="700000 bytes read, not 900000"):
        await store.publish_named("s/2", BytesIO(data), sha256_digest(data), 900_000)
    assert (await js.stream_info(f"OBJ_{INSTANCES_BUCKET}")).state.messages == 0
    assert await store.info("s/2") is None
