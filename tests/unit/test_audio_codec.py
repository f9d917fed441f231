"""Decoding and encoding with PyAV: containers, resampling, limits, refusals."""

import numpy as np
import pytest

from common.audio_codec import (
    OUTPUT_FORMATS,
    AudioInputError,
    change_tempo,
    decode_audio,
    encode_audio,
    sniff_container,
)
from tests.audio_files import audio_file as container_bytes
from tests.audio_files import tone

RATE = 16000


@pytest.mark.parametrize(
    "fmt,codec,kind",
    [
        ("wav", "pcm_s16le", "wav"),
        ("flac", "flac", "flac"),
        ("mp3", "libmp3lame", "mp3"),
        ("ogg", "libopus", "ogg"),
        ("webm", "libopus", "webm"),
        ("ipod", "aac", "mp4"),
        ("adts", "aac", "aac"),
    ],
)
def test_supported_containers_decode_to_mono_at_the_model_rate(fmt, codec, kind):
    data = container_bytes(fmt, codec, 48000, seconds=2.0, channels=2)
    assert sniff_container(data) == kind
    samples = decode_audio(data, RATE, max_duration_s=10)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / RATE - 2.0) < 0.1  # resampled 48 kHz stereo -> 16 kHz mono
    assert 0.2 < np.abs(samples).max() < 0.45  # FFmpeg downmixes stereo at -3 dB per channel


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty_file"),
        (b"just some text, not audio", "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "unsupported_format"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "invalid_audio"),
    ],
)
def test_unusable_uploads_are_refused_with_a_reason(data, code):
    with pytest.raises(AudioInputError) as info:
        decode_audio(data, RATE, 10)
    assert info.value.code == code and info.value.status_code == 400


def test_playlists_and_other_demuxers_are_never_probed():
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    assert sniff_container(playlist) is None
    aiff = container_bytes("aiff", "pcm_s16be", RATE)
    with pytest.raises(AudioInputError) as info:
        decode_audio(aiff, RATE, 10)
    assert info.value.code == "unsupported_format"


def test_duration_limit_stops_decoding_with_413():
    with pytest.raises(AudioInputError) as info:
        decode_audio(container_bytes("flac", "flac", RATE, seconds=3), RATE, max_duration_s=1)
    assert info.value.status_code == 413 and info.value.code == "audio_too_long"


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_every_speech_format_encodes_and_round_trips(fmt):
    data, media_type = encode_audio(tone(1.0), RATE, fmt)
    assert media_type == OUTPUT_FORMATS[fmt].media_type
    if fmt == "pcm":
        assert len(data) == 24000 * 2  # 24 kHz, 16-bit, 1 s
    else:
        assert abs(len(decode_audio(data, RATE, 10)) / RATE - 1.0) < 0.1


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_tempo_change_scales_duration(speed):
    stretched_s = len(change_tempo(tone(2.0), RATE, speed)) / RATE
    assert abs(stretched_s / (2.0 / speed) - 1) < 0.05
