"""The two parts that bound what a page makes ``lumbarseg serve`` hold, on their own (no server): the
un-chunker under wslink (:class:`LumbarSegLib.web.transport.BoundedUnChunker`, fed real wslink chunks) and
the upload's running count (:class:`LumbarSegLib.web.uploads.PieceUpload`, on a real folder). The server
with a raw websocket client is test_web_upload_memory.py."""

from __future__ import annotations

import pytest

from LumbarSegLib.errors import InputError
from LumbarSegLib.web.uploads import PieceUpload

wslink = pytest.importorskip("wslink")  # the web app's packages (bash tools/install.sh)


def _chunks(message, frame):
    import msgpack
    from wslink.chunking import generate_chunks

    return list(generate_chunks(msgpack.packb(message), frame))


def _hello(unchunker):
    unchunker.set_max_message_size(4 * 1024**3)  # what wslink does once a page says hello


def test_unchunker_passes_a_piece_and_refuses_more_before_allocating():
    from LumbarSegLib.web.transport import MESSAGE_LIMIT, PIECE_BYTES, BoundedUnChunker, MessageRefused

    unchunker = BoundedUnChunker()
    _hello(unchunker)
    assert unchunker.max_message_size == MESSAGE_LIMIT  # hello no longer opens it to 4 GB
    piece = {"id": "rpc:1", "method": "trame.trigger", "args": ["ls_upload_piece", ["me", "t", 0, bytes(PIECE_BYTES)]]}
    out = [unchunker.process_chunk(c) for c in _chunks(piece, 256 << 10)]
    assert out[:-1] == [None] * (len(out) - 1) and out[-1]["args"][1][3] == bytes(PIECE_BYTES)

    # 300 MB declared in the first 256 KiB chunk: refused from its header, nothing kept.
    big = _chunks({"id": "rpc:2", "args": [bytes(300_000_000)]}, 256 << 10)[0]
    with pytest.raises(MessageRefused, match="300.0 MB message"):
        unchunker.process_chunk(big)
    assert unchunker.pending_messages == {}


def test_unchunker_refuses_many_unfinished_messages_together():
    """wslink's own allocates every first chunk's declared size: 12-byte headers could claim gigabytes."""
    from wslink.chunking import _encode_header

    from LumbarSegLib.web.transport import MESSAGE_LIMIT, BoundedUnChunker, MessageRefused

    unchunker = BoundedUnChunker()
    _hello(unchunker)
    unchunker.process_chunk(_encode_header(1, 0, MESSAGE_LIMIT // 2) + b"x")
    with pytest.raises(MessageRefused):
        unchunker.process_chunk(_encode_header(2, 0, MESSAGE_LIMIT // 2 + 10) + b"x")
    with pytest.raises(MessageRefused, match="past the end"):
        unchunker.process_chunk(_encode_header(1, MESSAGE_LIMIT // 2 - 1, MESSAGE_LIMIT // 2) + b"xx")


def test_unchunker_before_hello_keeps_wslinks_small_ceiling():
    from LumbarSegLib.web.transport import BoundedUnChunker, MessageRefused

    with pytest.raises(MessageRefused):
        BoundedUnChunker().process_chunk(_chunks({"id": "x", "args": [bytes(4096)]}, 0)[0])


def test_piece_upload_stops_at_the_limit_and_deletes_what_came(tmp_path):
    upload = PieceUpload("ct.nrrd", 5000, tmp_path, max_bytes=5000)
    upload.add(0, bytes(4000))
    assert upload.path.stat().st_size == 4000  # on disk as it comes, not in memory
    with pytest.raises(InputError, match=r"more than this server accepts \(0 MB.*discarded"):
        upload.add(4000, bytes(4000))
    assert not list(tmp_path.iterdir())


def test_piece_upload_refuses_lies_disorder_and_a_short_end(tmp_path):
    with pytest.raises(InputError, match="more than this server accepts"):
        PieceUpload("ct.nrrd", 300_000_000, tmp_path, max_bytes=5_000_000)  # the declared size, first
    lying = PieceUpload("ct.nrrd", 100, tmp_path, max_bytes=5000)
    with pytest.raises(InputError, match="More arrived than the file's size"):
        lying.add(0, bytes(200))
    disorder = PieceUpload("ct.nrrd", 100, tmp_path, max_bytes=5000)
    with pytest.raises(InputError, match="out of order"):
        disorder.add(50, bytes(50))
    short = PieceUpload("ct.nrrd", 100, tmp_path, max_bytes=5000)
    short.add(0, bytes(60))
    with pytest.raises(InputError, match="stopped after"):
        short.finish()
    not_bytes = PieceUpload("ct.nrrd", 100, tmp_path, max_bytes=5000)
    with pytest.raises(InputError, match="not file data"):
        not_bytes.add(0, [0] * 100)
    assert not list(tmp_path.iterdir())
    whole = PieceUpload("x/../ct.nrrd", 100, tmp_path, max_bytes=5000)
    whole.add(0, b"a" * 60)
    whole.add(60, b"b" * 40)
    path = whole.finish()
    assert path.read_bytes() == b"a" * 60 + b"b" * 40 and path.name.startswith("upload-")
