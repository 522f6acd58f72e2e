"""``_Client``, our nats-py client: its header parser gives exactly nats-py's own results, and
a failed reconnect handshake does not leak its socket."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from jetstandby.faults import TcpProxy
from jetstandby.journal.stream import _Client, close_quietly, connect
from jetstandby.server import NatsServer

token = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=12)
line = st.one_of(
    st.builds(lambda k, v: f"{k}:{v}", token, token),
    st.builds(lambda k, v: f"{k}: {v}", token, token),
    token,
)


@given(st.lists(line, max_size=6), st.binary(max_size=20))
def test_same_headers_as_nats_py(lines: list[str], junk: bytes) -> None:
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + junk
    assert _Client._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_journal_headers() -> None:
    raw = b"Nats-Msg-Id: 1-12345\r\nNats-Expected-Last-Msg-Id: 1-12344\r\n\r\n"
    assert _Client._parse_header_lines(raw) == {
        "Nats-Msg-Id": "1-12345",
        "Nats-Expected-Last-Msg-Id": "1-12344",
    }
    weird = b"Bad Key: x\r\nTab\tKey: y\r\n\x1cSep: z\r\nGood:\tv \r\n"
    assert _Client._parse_header_lines(weird) == Client._parse_header_lines(weird) == {"Good": "v"}


async def test_a_failed_reconnect_handshake_closes_its_socket(nats_server: NatsServer) -> None:
    """nats-py 2.16 left the socket of a reconnect that connected but got no handshake open
    (until the garbage collector found it); ``_Client`` closes it before the next attempt."""
    assert nats_server.port is not None
    async with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        nc = await connect(proxy.url)
        try:
            proxy.cut()
            proxy.blackhole()  # listens again: new connections are accepted and hear nothing
            # The first reconnect's handshake times out (connect_timeout); the second attempt
            # is accepted; by then the first must have been closed, not left open.
            await proxy.wait_for(lambda s: s.accepted >= 3)
            stats = await proxy.wait_for(lambda s: s.active <= 1)
            assert stats.accepted >= 3 and not nc.is_connected
        finally:
            await close_quietly(nc)
