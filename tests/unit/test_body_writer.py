"""BodyWriter: chunks written at once from any code, or from the stream's task, always in order,
also when the client reads slowly and the server's `send` has to wait (flow control)."""

import asyncio

import pytest

from corral.api.sse import BodyWriter


class Server:
    """An ASGI `send` that records bodies and, while `paused`, waits like uvicorn's flow control."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.resume: asyncio.Future[None] | None = None
        self.fail: Exception | None = None

    def pause(self) -> None:
        self.resume = asyncio.get_running_loop().create_future()

    async def send(self, message: dict) -> None:
        if self.fail is not None:
            raise self.fail
        if self.resume is not None:
            await self.resume
        self.bodies.append(message["body"])


async def test_write_now_writes_before_returning_when_nothing_is_under_way():
    server, writer = Server(), BodyWriter()
    assert not writer.write_now(b"early")  # not bound to a response yet
    writer.bind(server.send)
    assert writer.write_now(b"a") and writer.write_now(b"b")
    assert server.bodies == [b"a", b"b"]  # synchronously: no await in between
    await writer.write(b"c")
    assert server.bodies == [b"a", b"b", b"c"]


async def test_a_slow_client_queues_what_follows_in_order():
    server, writer = Server(), BodyWriter()
    writer.bind(server.send)
    server.pause()
    assert writer.write_now(b"a")  # taken: the writer finishes it once the client reads
    assert not writer.write_now(b"b")  # refused: the caller keeps it for the stream's task
    later = asyncio.create_task(writer.write(b"b"))
    await asyncio.sleep(0.01)
    assert server.bodies == [] and not later.done()
    assert server.resume is not None
    resume, server.resume = server.resume, None
    resume.set_result(None)
    await later
    assert server.bodies == [b"a", b"b"]
    assert writer.write_now(b"c") and server.bodies[-1] == b"c"


async def test_nothing_is_written_at_once_while_the_streams_task_writes():
    server, writer = Server(), BodyWriter()
    writer.bind(server.send)
    server.pause()
    task = asyncio.create_task(writer.write(b"a"))
    await asyncio.sleep(0)
    assert not writer.write_now(b"b")  # it would overtake "a"
    assert server.resume is not None
    server.resume.set_result(None)
    server.resume = None
    await task
    assert writer.write_now(b"b") and server.bodies == [b"a", b"b"]


async def test_a_failed_send_surfaces_in_the_streams_task():
    server, writer = Server(), BodyWriter()
    writer.bind(server.send)
    server.fail = ConnectionResetError("gone")
    assert writer.write_now(b"a")  # taken (and lost with the connection)
    assert not writer.write_now(b"b")  # nothing more goes out at once
    with pytest.raises(ConnectionResetError):
        await writer.write(b"c")


async def test_closing_cancels_a_write_that_waits_for_the_client():
    server, writer = Server(), BodyWriter()
    writer.bind(server.send)
    server.pause()
    assert writer.write_now(b"a")
    await writer.close()
    assert server.bodies == []
