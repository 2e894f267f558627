"""The tags of frames and stored blobs are plain HMAC-SHA256, as docs/protocol.md says."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from leek.protocol.frame import PREFIX, TAG_SIZE, Keys, encode
from leek.protocol.mac import BLOCK, Mac, mac


@pytest.mark.parametrize("size", [0, 1, 32, BLOCK - 1, BLOCK, BLOCK + 1, 200])
def test_a_tag_is_the_hmac_of_the_message_under_a_key_of_any_length(size: int) -> None:
    key = os.urandom(size)
    for message in (b"", b"x", os.urandom(BLOCK), os.urandom(70_000)):
        assert Mac(key).tag(message) == hmac.digest(key, message, "sha256")


def test_a_message_in_parts_or_running_has_the_tag_of_the_whole() -> None:
    key, message = os.urandom(32), os.urandom(1000)
    expected = hmac.new(key, message, hashlib.sha256).digest()
    signer = mac(key)
    assert signer.tag(message[:3], memoryview(message)[3:500], message[500:]) == expected
    running = signer.begin()
    for at in range(0, len(message), 97):
        running.update(message[at : at + 97])
    assert signer.finish(running) == expected
    # each tag starts afresh: the pads are copied, never updated
    assert signer.tag(message) == expected
    assert mac(key) is signer


def test_tags_after_one_prefix_are_the_hmac_of_prefix_and_message_each_afresh() -> None:
    key = os.urandom(32)
    tag = mac(key).after(b"LKT1")
    for message in (b"", b"x", os.urandom(BLOCK), os.urandom(5000), b"x"):
        assert tag(message) == hmac.digest(key, b"LKT1" + message, "sha256")
    assert tag(memoryview(b"abc")) == hmac.digest(key, b"LKT1abc", "sha256")


def test_a_frame_s_tag_is_hmac_sha256_of_its_bytes_under_the_direction_s_key() -> None:
    keys = Keys.client(b"s" * 32)
    frame = encode(keys.send, (1, "ping", None))
    signed, tag = frame[:-TAG_SIZE], frame[-TAG_SIZE:]
    assert len(signed) > PREFIX
    assert tag == hmac.digest(keys.send, signed, "sha256")
    assert tag != hmac.digest(keys.receive, signed, "sha256")
