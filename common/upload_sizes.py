"""How big an upload's request body may be, and what it costs the router's memory: the router
reserves by these, and the config check refuses a router too small for its largest upload."""

from __future__ import annotations

FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and the small form fields of an upload
# A byte of an upload costs about 2.5 bytes of the router's memory at the peak (as read, as
# parsed or decoded, as serialized for the engine call; measured by bench/upload_memory.py).
UPLOAD_COPIES_HELD = 3


def largest_upload_body(max_upload_bytes: int) -> int:
    """The largest request body a model taking files of ``max_upload_bytes`` may be sent: its
    file as base64 in ``/v2`` JSON (or, smaller, in a multipart form)."""
    return max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES
