"""Why a video or frame file cannot be read, in words a user understands.

Decoders (:mod:`mosic.data.decoders`) and sources (:mod:`mosic.data.video_files`) turn their
failures into :class:`~mosic.errors.VideoReadError` with a reason from here: :func:`diagnose`
tells empty files, files that are not videos at all (text, HTML error pages, images) and
damaged videos apart from the first bytes and, for MP4/MOV, the top-level box layout; the
``*_detail`` helpers strip a decoder's own message down to what is worth showing.
"""

from __future__ import annotations

import os
import re


def short_error(error: Exception) -> str:
    """First line of a backend error, without decord's ``[hh:mm:ss] file.cc:123:`` prefixes."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", line).strip()


def os_error_reason(error: OSError) -> str:
    """"permission denied", "input/output error", ...: an OS error without errno and path."""
    return error.strerror.lower() if error.strerror else short_error(error)


def file_head(path: str) -> bytes:
    """The first 512 bytes of a file (what :func:`what_it_looks_like` reads); empty when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


#: (test on the first bytes, container name) of the formats FFmpeg reads video from
_CONTAINER_SIGNATURES = (
    (lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"), "MP4/MOV"),
    (lambda h: h.startswith(b"\x1a\x45\xdf\xa3"), "Matroska/WebM"),
    (lambda h: h.startswith(b"RIFF") and h[8:12] == b"AVI ", "AVI"),
    (lambda h: h.startswith(b"OggS"), "Ogg"),
    (lambda h: h.startswith(b"FLV"), "FLV"),
    (lambda h: h.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")), "MPEG program stream"),
    (lambda h: len(h) > 188 and h[0] == 0x47 and h[188] == 0x47, "MPEG transport stream"),
    (lambda h: h.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"), "ASF/WMV"),
    (lambda h: h.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")), "raw H.264/HEVC stream"),
)
_OTHER_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
)


def what_it_looks_like(head: bytes) -> str:
    """A few words on what a non-video file seems to be, from its first bytes."""
    for magic, what in _OTHER_SIGNATURES:
        if head.startswith(magic):
            return what
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML/XML page, often a failed download"
    try:
        head.decode("utf-8")
        return "it looks like text"
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 4 and error.start > 0:  # a character cut by the 512-byte window
            return "it looks like text"
    return "no known video container signature"


def mp4_layout_problem(path: str, size: int) -> str | None:
    """Why an MP4/MOV file cannot be parsed, from its top-level boxes; None when they look fine."""
    boxes, offset = set(), 0
    try:
        with open(path, "rb") as f:
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
                if box_size == 1 and len(header) == 16:
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:  # the box runs to the end of the file
                    box_size = size - offset
                if box_size < 8:
                    return f"its box structure is broken at byte {offset}"
                boxes.add(kind)
                if offset + box_size > size:
                    missing = "" if "moov" in boxes else "; its index ('moov' box) is missing"
                    return f"the file ends inside its '{kind}' box, at byte {size} of {offset + box_size}{missing}"
                offset += box_size
    except OSError:
        return None
    return None if "moov" in boxes else "its index ('moov' box) is missing"


def diagnose(path: str, detail: str) -> str:
    """A reason a user understands for a file a decoder could not open.

    Distinguishes empty files, files that are not videos at all (text, HTML error pages,
    images) and damaged videos ("truncated or corrupt: ..."); ``detail`` is the decoder's
    own message, appended for damaged videos.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        return "the file does not exist (any more)"
    except PermissionError:
        return "permission denied"
    except OSError as error:
        return f"the file cannot be read ({error.strerror or error})"
    if size == 0:
        return "empty file (0 bytes)"
    container = next((name for test, name in _CONTAINER_SIGNATURES if test(head)), None)
    if container is None:
        return f"not a video file ({what_it_looks_like(head)})"
    problem = mp4_layout_problem(path, size) if container == "MP4/MOV" else None
    detail = f" ({detail})" if detail else ""
    if problem is not None:
        return f"truncated or corrupt: {problem}{detail}"
    return f"truncated or corrupt: {container} data that the decoder cannot open{detail}"


def ffmpeg_detail(error: Exception) -> str:
    """FFmpeg's message without the errno and the file name PyAV adds."""
    detail = getattr(error, "strerror", None)
    return str(detail) if detail else short_error(error)


def decord_detail(error: Exception) -> str:
    """decord's message without its ``Check failed: expr (a vs. b)`` and ``Error reading path`` noise."""
    line = short_error(error)
    checked = re.search(r"\(-?\d+ vs\. -?\d+\)\s*(.*)$", line)
    if line.startswith("Check failed") and checked:
        line = checked.group(1)
    line = re.sub(r"^(Thread worker: |ERROR |Error: )", "", line).strip().rstrip(".")
    return "" if line.startswith("Error reading ") else line
