"""The one SIP reader on memory streams: what arrives together comes out together, keep-alives, the end,
and a stream that stops framing (raw for the relay, the end for an actor)."""

import trio
import trio.testing

from faultlab.net.reader import SipStreamReader, Unframed, parse_or_raw
from faultlab.sip import KeepAlive, Message

OPTIONS = (b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\n"
           b"Call-ID: k\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
GARBAGE = b"\x00\x01 not SIP at all\r\n\r\n"


async def test_one_read_one_batch_in_order_then_the_end():
    send, receive = trio.testing.memory_stream_pair()
    reader = SipStreamReader(receive)
    await send.send_all(OPTIONS + b"\r\n\r\n" + OPTIONS[:20])
    batch = await reader.read_batch()
    assert [type(item) for item in batch] == [Message, KeepAlive]
    assert batch[0].raw == OPTIONS and batch[1].raw == b"\r\n\r\n"
    await send.send_all(OPTIONS[20:])
    [rest] = await reader.read_batch()
    assert rest.raw == OPTIONS
    await send.aclose()
    assert await reader.read_batch() is None


async def test_a_stream_that_stops_framing_comes_out_raw_with_the_reason_once():
    send, receive = trio.testing.memory_stream_pair()
    reader = SipStreamReader(receive)
    await send.send_all(OPTIONS + GARBAGE)
    message, unframed = await reader.read_batch()
    assert message.raw == OPTIONS
    assert isinstance(unframed, Unframed) and unframed.data == GARBAGE and unframed.error
    await send.send_all(OPTIONS)
    assert await reader.read_batch() == [Unframed(OPTIONS)]  # raw from here on, even if it would frame
    await send.aclose()
    assert await reader.read_batch() is None


async def test_an_actor_reads_items_until_the_stream_stops_framing():
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(OPTIONS + GARBAGE + OPTIONS)
    items = [item async for item in SipStreamReader(receive).items()]
    assert [type(item) for item in items] == [Message, Unframed]


async def test_an_actor_reads_items_until_the_connection_breaks():
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(OPTIONS)
    reader = SipStreamReader(receive)
    seen = []
    async for item in reader.items():
        seen.append(item)
        await receive.aclose()  # e.g. the actor closed it: the next read fails, and the items end
    assert [item.raw for item in seen] == [OPTIONS]


def test_a_datagram_parses_or_stays_bytes_with_the_reason():
    message, error = parse_or_raw(OPTIONS)
    assert isinstance(message, Message) and error is None
    data, error = parse_or_raw(GARBAGE)
    assert data == GARBAGE and error


class _ResetAfter(trio.abc.ReceiveStream):
    """Hands out ``data`` in one read, then fails as a connection reset by the peer does."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def receive_some(self, max_bytes=None) -> bytes:
        data, self.data = self.data, b""
        if not data:
            raise trio.BrokenResourceError("connection reset by peer")
        return data

    async def aclose(self) -> None:
        pass


async def test_a_message_cut_short_by_a_broken_connection_ends_the_items_unframed():
    items = [item async for item in SipStreamReader(_ResetAfter(OPTIONS + OPTIONS[:20])).items()]
    assert [type(item) for item in items] == [Message, Unframed]
    assert items[1].data == OPTIONS[:20] and "closed inside a message" in items[1].error


async def test_a_broken_connection_between_messages_ends_the_items_quietly():
    items = [item async for item in SipStreamReader(_ResetAfter(OPTIONS)).items()]
    assert [item.raw for item in items] == [OPTIONS]
