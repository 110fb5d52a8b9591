"""DICOM objects in JetStream object-store buckets, written pipelined and read as a stream.

The layout is the standard object store one (`nats object get PACSOR_INSTANCES <name>` works):
chunks on `$O.<bucket>.C.<nuid>`, the object's metadata (size, chunk count, SHA-256) as the
last message on `$O.<bucket>.M.<base64url(name)>`. nats-py's own ObjectStore awaits each chunk's
acknowledgement before sending the next and reads whole objects into memory; here the chunks
are published back to back (512 KiB, not 128 KiB) and their acknowledgements awaited together,
and reads are yielded chunk by chunk, which is what lets ingest keep up with the network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from pacsor.errors import PacsorError
from pacsor.jetstream.subjects import (
    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
    ROLLUP_HEADER,
    ROLLUP_SUBJECT,
    WRONG_LAST_SEQUENCE,
    object_chunk_subject,
    object_meta_subject,
    object_store_stream,
)

log = logging.getLogger("pacsor.blobs")

CHUNK_SIZE = 512 * 1024
# Chunks of one object published before their acknowledgements are awaited: 8 MiB, so an
# instance of up to 8 MiB costs one round trip and a larger one holds 8 MiB in flight at most.
IN_FLIGHT_CHUNKS = 16
DIGEST_PREFIX = "SHA-256="


class BlobError(PacsorError):
    pass


class BlobNotFound(BlobError):
    pass


class BlobInfo(msgspec.Struct, frozen=True):
    """An object's metadata message, as the object store writes it (other fields ignored)."""

    name: str
    bucket: str
    nuid: str
    size: int = 0
    chunks: int = 0
    digest: str = ""
    deleted: bool = False

    @property
    def sha256_hex(self) -> str:
        return digest_hex(self.digest)


def sha256_digest(data: bytes | memoryview) -> str:
    """The object store's digest notation of `data`."""
    return digest_notation(hashlib.sha256(data).digest())


def digest_notation(sha256: bytes) -> str:
    """The object store's notation of a SHA-256: `SHA-256=<base64url>`."""
    return DIGEST_PREFIX + base64.urlsafe_b64encode(sha256).decode()


def digest_hex(digest: str) -> str:
    """The SHA-256 of the object store's notation `SHA-256=<base64url>`, in hexadecimal."""
    return base64.urlsafe_b64decode(digest.removeprefix(DIGEST_PREFIX)).hex()


class BlobStore:
    """One object-store bucket (its stream is declared in streams/OBJ_<bucket>.json)."""

    def __init__(self, nc: Client, js: JetStreamContext, bucket: str, timeout: float = 10.0):
        self._nc = nc
        self._js = js
        self.bucket = bucket
        self.stream = object_store_stream(bucket)
        self._timeout = timeout
        # Larger chunks mean fewer messages; they must fit the server's max_payload.
        self._chunk_size = max(min(CHUNK_SIZE, nc.max_payload - 4096), 16 * 1024)

    def _meta_subject(self, name: str) -> str:
        return object_meta_subject(self.bucket, name)

    def _chunk_subject(self, nuid: str) -> str:
        return object_chunk_subject(self.bucket, nuid)

    async def info(self, name: str) -> BlobInfo | None:
        """The object's metadata, or None when there is no such (undeleted) object."""
        try:
            raw = await self._js.get_last_msg(self.stream, self._meta_subject(name), direct=True)
        except NotFoundError:
            return None
        if not raw.data:
            return None
        info = msgspec.json.decode(raw.data, type=BlobInfo)
        return None if info.deleted else info

    async def put(self, name: str, data: bytes, digest: str | None = None) -> BlobInfo:
        """Store `data` under `name`; a byte-identical object already there is kept as is."""
        digest = digest or sha256_digest(data)
        existing = await self.info(name)
        if existing is not None and existing.digest == digest and existing.size == len(data):
            return existing

        nuid = self._nc._nuid.next().decode()
        chunk_subject = self._chunk_subject(nuid)
        view = memoryview(data)
        pending = []
        try:
            for offset in range(0, len(data), self._chunk_size):
                chunk = bytes(view[offset : offset + self._chunk_size])
                pending.append(await self._js.publish_async(chunk_subject, chunk))
            await asyncio.wait_for(asyncio.gather(*pending), self._timeout)
            info = BlobInfo(
                name=name,
                bucket=self.bucket,
                nuid=nuid,
                size=len(data),
                chunks=len(pending),
                digest=digest,
            )
            await self._publish_meta(info)
        except BaseException:
            for future in pending:
                future.cancel()
            await self._discard_chunks(chunk_subject)
            raise
        if existing is not None:
            await self._discard_chunks(self._chunk_subject(existing.nuid))
        return info

    async def publish_named(
        self, name: str, source: BinaryIO, digest: str, size: int
    ) -> PendingObject:
        """Publish a content-addressed object (its name carries its digest), read from
        `source` a chunk at a time, without waiting: the chunks and the metadata go out back
        to back; the caller awaits `PendingObject.stored` together with its own
        acknowledgements (one round trip in all, for an object of up to IN_FLIGHT_CHUNKS
        chunks).

        No lookup first: the metadata is written only where no metadata of that name is
        (expected last subject sequence 0). When an identical object is already stored
        (same name, so same bytes), it is kept and these chunks purged; a deletion marker
        in its place is replaced. This holds whatever the time since the first copy, where
        an idempotency key would hold only within the duplicate window, and would take a
        resend of a deleted object for a duplicate.

        `digest` and `size` are the caller's, taken from the bytes as they were written to
        `source` (the SCP hashes a dataset while it is received), so the bytes are not hashed
        again here; a reader checks them against `digest` on every read. BlobError before the
        metadata when `source` does not hold `size` bytes. A failure purges what was sent.
        """
        nuid = self._nc._nuid.next().decode()
        chunk_subject = self._chunk_subject(nuid)
        pending: list[asyncio.Future[Any]] = []
        read = 0
        try:
            # The first chunk read here: nothing of this object is waiting to be sent yet.
            chunk = source.read(self._chunk_size)
            while chunk:
                if pending and len(pending) % IN_FLIGHT_CHUNKS == 0:
                    # A large object waits for its earlier chunks: at most IN_FLIGHT_CHUNKS
                    # are buffered by the client, whatever the object's size.
                    await asyncio.wait_for(asyncio.gather(*pending), self._timeout)
                read += len(chunk)
                pending.append(await self._js.publish_async(chunk_subject, chunk))
                if read >= size:
                    chunk = source.read(self._chunk_size)  # the end, at once
                else:
                    # Read on a worker thread (file reads release the GIL): the event loop
                    # meanwhile sends the chunks before it to nats-server, and serves the
                    # other associations.
                    chunk = await asyncio.to_thread(source.read, self._chunk_size)
            if read != size:
                raise BlobError(f"{self.bucket}/{name}: {read} bytes read, not {size}")
            info = BlobInfo(
                name=name,
                bucket=self.bucket,
                nuid=nuid,
                size=size,
                chunks=len(pending),
                digest=digest,
            )
            written = PendingObject(self, info, pending)
            await written.publish_meta(expected=0)
        except BaseException:
            await _settled(pending, self._timeout)
            await self._discard_chunks(chunk_subject)
            raise
        return written

    def writer(self) -> BlobWriter:
        """Write an object whose bytes arrive in pieces and whose name is known at the end."""
        return BlobWriter(self)

    async def _commit(self, name: str, nuid: str, size: int, chunks: int, digest: str) -> BlobInfo:
        """Publish the metadata that makes written chunks the object `name`."""
        existing = await self.info(name)
        if existing is not None and existing.digest == digest and existing.size == size:
            await self._discard_chunks(self._chunk_subject(nuid))
            return existing
        info = BlobInfo(
            name=name, bucket=self.bucket, nuid=nuid, size=size, chunks=chunks, digest=digest
        )
        await self._publish_meta(info)
        if existing is not None:
            await self._discard_chunks(self._chunk_subject(existing.nuid))
        return info

    def _meta_body(self, info: BlobInfo) -> bytes:
        meta = msgspec.structs.asdict(info)
        if not info.deleted:
            del meta["deleted"]
            meta["options"] = {"max_chunk_size": self._chunk_size}
        meta["mtime"] = datetime.now(UTC).isoformat()
        return json.dumps(meta).encode()

    async def _publish_meta(self, info: BlobInfo) -> None:
        """The metadata message makes chunks an object (or marks it deleted); as a rollup, it
        replaces the earlier metadata of that name."""
        await self._js.publish(
            self._meta_subject(info.name),
            self._meta_body(info),
            headers={ROLLUP_HEADER: ROLLUP_SUBJECT},
            timeout=self._timeout,
        )

    async def _discard_chunks(self, chunk_subject: str) -> None:
        # Orphaned chunks only waste space until max_age; failing to purge them is not an error
        # worth hiding the original one for.
        try:
            await self._js.purge_stream(self.stream, subject=chunk_subject)
        except Exception:  # logged, not swallowed: the caller's own error is the one raised
            log.warning("could not purge chunks", extra={"subject": chunk_subject}, exc_info=True)

    async def chunks(
        self, name: str, expected_digest: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the object's bytes chunk by chunk.

        Raises BlobError when the bytes do not match the object's digest, or the object's
        digest is not `expected_digest` (what an event recorded), before the first chunk.
        """
        info = await self.info(name)
        if info is None:
            raise BlobNotFound(f"{self.bucket}/{name}: no such object")
        if expected_digest is not None and info.digest != expected_digest:
            raise BlobError(
                f"{self.bucket}/{name}: holds {info.digest}, not the recorded {expected_digest}"
            )
        if info.chunks == 0:
            return
        if info.chunks == 1:
            # One round trip, where an ordered consumer costs several (most instances of a
            # radiograph study fit one chunk).
            only = await self._js.get_last_msg(
                self.stream, self._chunk_subject(info.nuid), direct=True
            )
            data = only.data or b""
            self._verify(name, info, hashlib.sha256(data))
            yield data
            return
        hasher = hashlib.sha256()
        received = 0
        sub = await self._js.subscribe(self._chunk_subject(info.nuid), ordered_consumer=True)
        try:
            while received < info.chunks:
                msg = await sub.next_msg(timeout=self._timeout)
                received += 1
                hasher.update(msg.data)
                yield msg.data
        finally:
            await sub.unsubscribe()
        self._verify(name, info, hasher)

    def _verify(self, name: str, info: BlobInfo, hasher: hashlib._Hash) -> None:
        if digest_notation(hasher.digest()) != info.digest:
            raise BlobError(f"{self.bucket}/{name}: digest mismatch, the object is corrupt")

    async def get(self, name: str) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(name)])

    async def delete(self, name: str) -> bool:
        """Remove the object (the object store's way: its metadata marked deleted, its chunks
        purged); False when there was no such object."""
        info = await self.info(name)
        if info is None:
            return False
        gone = msgspec.structs.replace(info, size=0, chunks=0, digest="", deleted=True)
        await self._publish_meta(gone)
        await self._js.purge_stream(self.stream, subject=self._chunk_subject(info.nuid))
        return True


async def _settled(futures: list[asyncio.Future[Any]], timeout: float) -> None:
    """Wait until none of `futures` is still on its way (their outcome is not the point)."""
    if futures:
        await asyncio.wait(futures, timeout=timeout)


class PendingObject:
    """An object whose chunks and metadata were sent by `BlobStore.publish_named`, not yet
    acknowledged: `stored` awaits them and settles a name that already had metadata."""

    def __init__(self, store: BlobStore, info: BlobInfo, chunks: list[asyncio.Future[Any]]) -> None:
        self._store = store
        self.info = info
        self._chunks = chunks
        self._meta: asyncio.Future[Any] | None = None

    async def publish_meta(self, expected: int) -> None:
        store = self._store
        # A request of its own, not publish_async: nats-py raises a publish_async error
        # (here, the expected sequence) inside its reply callback, and the future never ends.
        self._meta = asyncio.ensure_future(
            store._js.publish(
                store._meta_subject(self.info.name),
                store._meta_body(self.info),
                timeout=store._timeout,
                headers={
                    ROLLUP_HEADER: ROLLUP_SUBJECT,
                    EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: str(expected),
                },
            )
        )
        await asyncio.sleep(0)  # the task sends its request now, before the caller's next one

    async def stored(self) -> bool:
        """True when these bytes are now the object; False when an identical object was
        already stored (these chunks are then purged). Raises, having purged them, when
        they could not be stored."""
        store = self._store
        try:
            await asyncio.wait_for(asyncio.gather(*self._chunks), store._timeout)
            for _ in range(3):
                assert self._meta is not None
                try:
                    await self._meta
                    return True
                except APIError as err:
                    if err.err_code != WRONG_LAST_SEQUENCE:
                        raise
                last = await self._last_meta()
                if last is not None and not last[1].deleted and last[1].digest == self.info.digest:
                    await self.discard()
                    return False
                # A deletion marker (or metadata written meanwhile): these bytes replace it.
                await self.publish_meta(expected=last[0] if last else 0)
            raise BlobError(f"{store.bucket}/{self.info.name}: its metadata kept changing")
        except BaseException:
            await self.discard()
            raise

    async def _last_meta(self) -> tuple[int, BlobInfo] | None:
        store = self._store
        try:
            raw = await store._js.get_last_msg(
                store.stream, store._meta_subject(self.info.name), direct=True
            )
        except NotFoundError:
            return None
        return int(raw.seq or 0), msgspec.json.decode(raw.data or b"{}", type=BlobInfo)

    async def discard(self) -> None:
        """Purge these chunks once none is still on its way (logged, not raised, when that
        fails: the bucket's max_age removes them then)."""
        await _settled(self._chunks, self._store._timeout)
        await self._store._discard_chunks(self._store._chunk_subject(self.info.nuid))


class BlobWriter:
    """Chunks published as the bytes come (never more than one chunk held), named on commit.

    Until `commit`, the chunks belong to no object; `abort` (or an error) purges them.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._nuid = store._nc._nuid.next().decode()
        self._subject = store._chunk_subject(self._nuid)
        self._buffer = bytearray()
        self._hasher = hashlib.sha256()
        self._pending: list[asyncio.Future[Any]] = []
        self.size = 0

    @property
    def digest(self) -> str:
        return digest_notation(self._hasher.digest())

    async def write(self, data: bytes) -> None:
        self._hasher.update(data)
        self.size += len(data)
        self._buffer += data
        size = self._store._chunk_size
        while len(self._buffer) >= size:
            await self._publish(bytes(self._buffer[:size]))
            del self._buffer[:size]

    async def _publish(self, chunk: bytes) -> None:
        self._pending.append(await self._store._js.publish_async(self._subject, chunk))
        if len(self._pending) >= 8:  # bounded in flight: await the oldest acknowledgements
            await asyncio.wait_for(asyncio.gather(*self._pending), self._store._timeout)
            self._pending.clear()

    async def commit(self, name: str) -> BlobInfo:
        try:
            if self._buffer:
                await self._publish(bytes(self._buffer))
                self._buffer.clear()
            await asyncio.wait_for(asyncio.gather(*self._pending), self._store._timeout)
        except BaseException:
            await self.abort()
            raise
        # Every chunk but the last is exactly chunk-sized.
        chunks = -(-self.size // self._store._chunk_size)
        return await self._store._commit(name, self._nuid, self.size, chunks, self.digest)

    async def abort(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        await self._store._discard_chunks(self._subject)
