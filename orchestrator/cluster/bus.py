"""The replicas' one connection to NATS JetStream: the stream of writes, its consumer, the snapshot store.

Nothing here knows the state. :class:`Bus` keeps one NATS connection (reconnecting by itself, forever),
makes sure the stream and the object store exist with the configured limits, publishes a write and waits
for JetStream's acknowledgement, and reads the stream in order from a given sequence.

Subjects (``<stream>`` is ``cluster.stream``)::

    <stream>.register.<agent>    {"agent_id", "hostname", "metadata"}      (orjson)
    <stream>.heartbeat.<agent>   {"agent_id"}                              (orjson)
    <stream>.report.<agent>      the report's JSON, gzip or zlib compressed (the probe's own gzip body as is)
    <stream>.clock.<k>           {"k": k}: the log's clock tick number k (see orchestrator.cluster.replica)

``<agent>`` is the agent id with ``.`` written ``%2E`` (a dot would split the subject token), so the
stream's per-subject limit is a per-agent, per-kind limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ObjectMeta,
    ObjectMetaOptions,
    StorageType,
    StreamConfig,
)

log = structlog.get_logger("orchestrator.cluster.bus")

KINDS = ("register", "heartbeat", "report", "clock")
SNAPSHOT_OBJECT = "state"
FETCH_BATCH = 512
# A snapshot is stored in chunks of the server's max_payload less this (nats-py's default chunk is 128 KiB).
# The object store's put waits for each chunk's acknowledgement in turn, and each wait is a turn of a loop
# busy applying the log: 20 MB took 4.6 s in 128 KiB chunks against 0.7 s in 1 MiB ones (4 ms slices).
CHUNK_HEADROOM = 16 * 1024
SNAPSHOT_FETCH_CHUNKS = 32  # chunks asked for at a time when downloading a snapshot (~32 MiB)


class BusUnavailable(Exception):
    """JetStream did not store a message (not connected, no acknowledgement in time, refused)."""


class PayloadTooLarge(BusUnavailable):
    """The message is larger than the NATS server's ``max_payload``."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as read back from the stream."""

    seq: int  # stream sequence
    stored_at: float  # JetStream's stored time, seconds since the epoch
    kind: str
    msg_id: str | None
    payload: bytes
    pending: int  # messages after this one in the stream when it was delivered


def subject_token(agent_id: str) -> str:
    return agent_id.replace(".", "%2E")


def stream_config(settings) -> StreamConfig:
    """The stream's limits, from the settings: retention follows the time-series retention by default."""
    cluster, storage = settings.cluster, settings.storage
    max_age = storage.max_data_age if cluster.max_age is None else cluster.max_age
    per_agent = cluster.max_msgs_per_agent or math.ceil(storage.max_data_age / storage.resolution)
    return StreamConfig(
        name=cluster.stream,
        subjects=[f"{cluster.stream}.>"],
        storage=StorageType.FILE,
        num_replicas=cluster.stream_replicas,
        max_age=max_age or None,
        max_msgs_per_subject=per_agent,
        max_bytes=cluster.max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=cluster.duplicate_window,
    )


class Bus:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.stream = self.cluster.stream
        self.nc = None
        self.js = None
        self.snapshots = None  # the object store bucket
        self.ready = False  # connected, stream and bucket in place
        self.generation = 0  # bumped at each (re)connection: consumers made before it are gone or stale
        self.closed = False

    @property
    def available(self) -> bool:
        return self.ready and self.nc is not None and self.nc.is_connected

    # -- connecting ----------------------------------------------------------------------------------

    async def connect_forever(self) -> None:
        """Connect (retrying until it works or :meth:`close`), then set up the stream and the bucket.
        After the first connection the client reconnects by itself; each reconnection re-checks them."""
        servers = [url.strip() for url in self.cluster.nats_url.split(",") if url.strip()]
        wait = self.cluster.reconnect_wait
        while not self.closed:
            try:
                self.nc = await nats.connect(
                    servers=servers,
                    name=f"orchestrator:{self.stream}",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=wait,
                    ping_interval=2,
                    max_outstanding_pings=2,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
                break
            except Exception as exc:
                log.warning("nats_connect_failed", servers=servers, error=repr(exc))
                await asyncio.sleep(wait)
        if self.closed:
            return
        self.js = self.nc.jetstream(timeout=self.cluster.publish_timeout)
        await self._set_up()

    async def _set_up(self) -> None:
        """Stream and bucket, retried while NATS answers with errors (e.g. JetStream still starting)."""
        while not self.closed:
            try:
                await self._ensure_stream()
                try:
                    self.snapshots = await self.js.object_store(f"{self.stream}_snapshots")
                except nats.js.errors.BucketNotFoundError:
                    self.snapshots = await self.js.create_object_store(
                        f"{self.stream}_snapshots", storage=StorageType.FILE, replicas=self.cluster.stream_replicas
                    )
                self.generation += 1
                self.ready = True
                log.info("nats_ready", stream=self.stream, generation=self.generation)
                return
            except Exception as exc:
                log.warning("nats_setup_failed", stream=self.stream, error=repr(exc))
                await asyncio.sleep(self.cluster.reconnect_wait)

    async def _ensure_stream(self) -> None:
        config = stream_config(self.settings)
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
            return
        await self.js.update_stream(config)

    async def _disconnected(self) -> None:
        if self.ready:
            log.warning("nats_disconnected", stream=self.stream)
        self.ready = False

    async def _reconnected(self) -> None:
        log.info("nats_reconnected", stream=self.stream)
        asyncio.get_running_loop().create_task(self._set_up())

    async def _error(self, exc: Exception) -> None:
        log.debug("nats_error", error=repr(exc))

    async def close(self) -> None:
        self.closed = True
        self.ready = False
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    # -- writing -------------------------------------------------------------------------------------

    async def publish(self, kind: str, token: str, payload: bytes, msg_id: str):
        """Store one message; returns JetStream's PubAck (``seq``, ``duplicate``).

        :raises BusUnavailable: not stored (or not known to be stored): the caller answers 503.
        """
        if not self.available:
            raise BusUnavailable("not connected to NATS")
        try:
            return await self.js.publish(
                f"{self.stream}.{kind}.{token}",
                payload,
                timeout=self.cluster.publish_timeout,
                headers={"Nats-Msg-Id": msg_id},
            )
        except nats.errors.MaxPayloadError as exc:
            raise PayloadTooLarge(str(exc) or "message larger than the NATS server's max_payload") from None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusUnavailable(repr(exc)) from None

    # -- reading -------------------------------------------------------------------------------------

    async def reader(self, start_seq: int):
        """An ephemeral pull consumer over the whole stream from ``start_seq`` (no acks: order is all)."""
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        return await self.js.pull_subscribe(f"{self.stream}.>", durable=None, stream=self.stream, config=config)

    async def fetch(self, reader, timeout: float) -> list[Stored]:
        """The next messages (up to :data:`FETCH_BATCH`); empty when none came within ``timeout``."""
        try:
            msgs = await reader.fetch(FETCH_BATCH, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        out = []
        for msg in msgs:
            meta = msg.metadata
            kind = msg.subject[len(self.stream) + 1 :].split(".", 1)[0]
            msg_id = msg.headers.get("Nats-Msg-Id") if msg.headers else None
            out.append(
                Stored(meta.sequence.stream, meta.timestamp.timestamp(), kind, msg_id, msg.data, meta.num_pending)
            )
        return out

    async def stream_state(self) -> tuple[int, int]:
        """The stream's (first, last) sequence."""
        info = await self.js.stream_info(self.stream)
        return info.state.first_seq, info.state.last_seq

    # -- snapshots -----------------------------------------------------------------------------------

    async def snapshot_description(self) -> str | None:
        """The description of the stored snapshot (its header), or None when there is none."""
        try:
            info = await self.snapshots.get_info(SNAPSHOT_OBJECT)
        except nats.js.errors.ObjectNotFoundError:
            return None
        return None if info.deleted else info.description

    async def get_snapshot(self) -> bytes | None:
        """The stored snapshot's bytes, size and digest checked; None when there is none.

        Its chunks are read with a pull consumer in batches, not with nats-py's ``ObjectStore.get``: that
        one reads through a push consumer whose flow control paused at every chunk past the first few
        (20 MB in 1 MiB chunks: 0.78 s, against 0.09 s here) and, without ``writeinto``, appended each chunk
        to a bytes object. The layout read is the object store's own (ADR-20: stream ``OBJ_<bucket>``,
        chunks on ``$O.<bucket>.C.<nuid>``), the one every NATS client writes and reads. A snapshot replaced
        by another replica while it is read (its old chunks purged) is read again, up to three times.
        """
        for attempt in range(3):
            try:
                info = await self.snapshots.get_info(SNAPSHOT_OBJECT)
            except nats.js.errors.ObjectNotFoundError:
                return None
            if info.deleted:
                return None
            try:
                return await self._read_chunks(info)
            except (TimeoutError, nats.errors.TimeoutError, ValueError):
                if attempt == 2:
                    raise
                log.warning("snapshot_read_again", reason="replaced or incomplete while read")
        return None  # not reached

    async def _read_chunks(self, info) -> bytes:
        bucket = f"{self.stream}_snapshots"
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        reader = await self.js.pull_subscribe(
            f"$O.{bucket}.C.{info.nuid}", durable=None, stream=f"OBJ_{bucket}", config=config
        )
        chunks: list[bytes] = []
        try:
            while len(chunks) < (info.chunks or 0):
                batch = await reader.fetch(min(SNAPSHOT_FETCH_CHUNKS, info.chunks - len(chunks)), timeout=5.0)
                chunks += [msg.data for msg in batch]
        finally:
            with contextlib.suppress(Exception):
                await reader.unsubscribe()
        data = b"".join(chunks)
        expected = (info.digest or "").partition("=")[2]
        if len(data) != info.size or base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode() != expected:
            raise ValueError("the stored snapshot does not match its size and digest")
        return data

    async def put_snapshot(self, data: bytes, description: str) -> None:
        chunk = max(self.nc.max_payload - CHUNK_HEADROOM, self.nc.max_payload // 2)
        meta = ObjectMeta(
            name=SNAPSHOT_OBJECT, description=description, options=ObjectMetaOptions(max_chunk_size=chunk)
        )
        await self.snapshots.put(SNAPSHOT_OBJECT, data, meta=meta)
