"""What an answer measured of its media, for the usage ledger: the seconds of audio in (an upload's
decoded length) and out (synthesised speech), the images a request held and the seconds of video
it decoded. The engine that decodes or makes the media knows the numbers; it sends them in one
header of its answer, which the request policy reads and takes out before the client gets it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

MEDIA_USAGE_HEADER = "x-platform-media-usage"


@dataclass(frozen=True)
class MediaUsage:
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    images: int = 0
    video_s: float = 0.0

    def __add__(self, other: MediaUsage) -> MediaUsage:
        return MediaUsage(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(MediaUsage))
        )

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(MediaUsage))

    def headers(self) -> dict[str, str]:
        """The header an engine's answer carries (none when it measured nothing)."""
        if not self:
            return {}
        return {MEDIA_USAGE_HEADER: json.dumps(self.as_dict(), separators=(",", ":"))}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_dict(cls, measured: Any) -> MediaUsage:
        """The measures in a mapping; none for anything malformed (an answer is never refused
        over its metering)."""
        try:
            return cls(
                audio_in_s=_count(measured, "audio_in_s", float),
                audio_out_s=_count(measured, "audio_out_s", float),
                images=_count(measured, "images", int),
                video_s=_count(measured, "video_s", float),
            )
        except (TypeError, ValueError, AttributeError):
            return cls()

    @classmethod
    def of_header(cls, value: str | bytes | None) -> MediaUsage:
        """The measures in a header's value (JSON); none for a missing or malformed one."""
        try:
            return cls.of_dict(json.loads(value)) if value else cls()
        except ValueError:
            return cls()

    @classmethod
    def of_headers(cls, headers: Mapping[str, str] | None) -> MediaUsage:
        return cls.of_header((headers or {}).get(MEDIA_USAGE_HEADER))


MEASURES = tuple(f.name for f in fields(MediaUsage))  # the usage ledger's columns of the same names


def _count(measured: dict, name: str, kind: type) -> Any:
    return max(kind(measured.get(name) or 0), 0)


NO_MEDIA = MediaUsage()
