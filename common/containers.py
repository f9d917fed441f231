"""Recognise media containers by their first bytes, so FFmpeg is told which one demuxer to
use instead of probing (its probing also accepts playlists and concat lists, which open
other files or URLs named inside the upload)."""

from __future__ import annotations

# our name -> FFmpeg demuxer
DEMUXERS = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "aac": "aac",
    "ogg": "ogg",
    "webm": "matroska",
    "mp4": "mp4",
    "avi": "avi",
}


def sniff_container(data: bytes) -> str | None:
    """The container of ``data`` by its magic bytes, or None when it is not a supported one."""
    head = data[:12]
    if head[:4] == b"RIFF":
        return {b"WAVE": "wav", b"AVI ": "avi"}.get(head[8:12])
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"  # Matroska/WebM
    if head[4:8] == b"ftyp":
        return "mp4"  # MP4/M4A/MOV
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: MPEG sync word with layer bits 00
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None
