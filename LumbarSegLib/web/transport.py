"""How much a page may make the server hold in memory: one websocket message of at most ``MESSAGE_LIMIT``.

Without this, wslink (the websocket layer under trame) lets any connected page - a read-only one too -
send one message of up to 4 GB: its un-chunker allocates the whole size a chunk header declares once the
page has said hello, and reassembles it (then copies it twice more) before any LumbarSeg handler can look
at it. A 300 MB upload against ``--max-upload-mb 5`` raised the server's memory by 860 MB before the size
check refused it (issue 24 item 9).

So every message a page sends is bounded here, before it is held:

- a websocket frame over ``FRAME_LIMIT`` is refused by aiohttp from its header, before its payload is
  read (``WSLINK_MAX_MSG_SIZE``, which is also the frame size wslink tells the page to cut messages into);
- a message cut into frames (wslink's chunk header declares the whole size) is refused from its first
  chunk's header when its declared size, or the sum of the page's unfinished messages, passes the limit.

A refused page is disconnected with websocket close code 1009 ("message too big") and a reason; the
server's console says why. A CT file therefore never travels as one message: the page sends it in
``PIECE_BYTES`` pieces that the server writes to disk as they come, with a running count against
``--max-upload-mb`` (:class:`.uploads.PieceUpload`).
"""

from __future__ import annotations

import logging
import os
import sys

PIECE_BYTES = 1 << 20  # one upload piece (1 MiB): a 100 MB CT is 100 round trips, a few seconds on a LAN
# A piece plus its RPC wrapper (msgpack, the trigger's name and arguments) with room to spare; every other
# message a page sends (clicks, heartbeats, state changes, view events) is a few kB at most.
MESSAGE_LIMIT = PIECE_BYTES + (64 << 10)
# The websocket frame limit, also the size the page is told to cut its messages into (a piece is 5 frames):
# smaller than a message so that the frames aiohttp has read ahead when a message is refused stay small.
FRAME_LIMIT = 256 << 10
TOO_BIG = 1009  # websocket close code "message too big" (RFC 6455)

log = logging.getLogger(__name__)


class MessageRefused(ValueError):
    pass


def bound_transport(limit: int = MESSAGE_LIMIT, frame: int = FRAME_LIMIT) -> None:
    """Bound what one page may send before the websocket server is made (``lumbarseg serve`` calls this
    before :func:`serve` starts trame; app.serve sets trame's own option to ``frame`` too). Safe to call
    again."""
    # wslink reads these at import time and trame's server overwrites WSLINK_MAX_MSG_SIZE from its own
    # option at start: set them all so each layer agrees.
    os.environ["WSLINK_MAX_MSG_SIZE"] = str(frame)
    os.environ["TRAME_WS_MAX_MSG_SIZE"] = str(frame)
    os.environ["WSLINK_MSG_OVERHEAD"] = "4096"
    import wslink.backends.aiohttp as backend
    import wslink.protocol as protocol

    protocol.MAX_MSG_SIZE = frame  # the frame size the hello answer tells the page to cut messages into
    backend.MAX_MSG_SIZE = frame  # aiohttp's frame limit (re-read from the environment when the app is made)
    # WebAppServer makes its handler by this module-level name when the server starts.
    base = getattr(backend.AioHttpWsHandler, "wslink_handler", backend.AioHttpWsHandler)
    backend.AioHttpWsHandler = _bounded_handler_class(base, limit)


def _bounded_handler_class(base, limit: int):
    class BoundedWsHandler(base):
        """wslink's aiohttp handler, with a bounded un-chunker per connection and a clean refusal."""

        wslink_handler = base  # what a second bound_transport call builds on

        async def onConnect(self, request, client_id):
            await super().onConnect(request, client_id)
            self.unchunkers[client_id] = BoundedUnChunker(limit)

        async def onMessage(self, is_binary, msg, client_id):
            import aiohttp

            ws = self.connections.get(client_id)
            peer = getattr(getattr(ws, "_req", None), "remote", "?")
            if msg.type == aiohttp.WSMsgType.ERROR:  # aiohttp refused a frame (too big) and is closing
                print(f"lumbarseg: refused a message from {peer}: {msg.data}", file=sys.stderr, flush=True)
                return
            try:
                await super().onMessage(is_binary, msg, client_id)
            except MessageRefused as exc:
                print(f"lumbarseg: refused a message from {peer}: {exc}", file=sys.stderr, flush=True)
                if ws is not None:
                    await ws.close(code=TOO_BIG, message=str(exc).encode()[:120])

    return BoundedWsHandler


def _unchunker_base():
    from wslink.chunking import UnChunker

    return UnChunker


class BoundedUnChunker(_unchunker_base()):
    """wslink's un-chunker with a ceiling: no message, and no set of unfinished messages, over ``limit``.

    wslink's own raises its ceiling to 4 GB on hello and allocates each message's declared size from its
    first chunk; here hello cannot raise it past ``limit`` and a declared size is checked before anything
    is allocated."""

    def __init__(self, limit: int = MESSAGE_LIMIT):
        super().__init__()  # its ceiling before hello (WSLINK_AUTH_MSG_SIZE, 512 bytes) stays
        self.limit = int(limit)

    def set_max_message_size(self, size):
        super().set_max_message_size(min(int(size), self.limit))

    def process_chunk(self, chunk: bytes):
        from wslink.chunking import HEADER_LENGTH, _decode_header

        if len(chunk) < HEADER_LENGTH:
            raise MessageRefused("a message without its wslink header")
        msg_id, offset, total = _decode_header(chunk[:HEADER_LENGTH])
        pending = self.pending_messages.get(msg_id)
        if pending is None:
            held = sum(len(p["content"]) for p in self.pending_messages.values())
            if total > self.max_message_size or held + total > self.limit:
                raise MessageRefused(f"a {total / 1e6:.1f} MB message; a page may send at most "
                                     f"{self.max_message_size / 1e6:.2f} MB at a time")
        if offset + len(chunk) - HEADER_LENGTH > total:
            raise MessageRefused("a chunk past the end of its message")
        return super().process_chunk(chunk)
