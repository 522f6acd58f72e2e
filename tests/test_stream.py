"""The nats-py header-parser override gives exactly nats-py's own results."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from jetstandby.journal.stream import _Client

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
