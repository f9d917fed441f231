"""``type: audio`` config: task aliases, capabilities, queue sizing and field errors."""

import pytest

from configs import ConfigError, load_platform_config
from configs.server_models import Capability


def audio_args(**engine_kwargs) -> dict:
    return {
        "models": [
            {
                "model_loading_config": {
                    "model_id": "asr",
                    "model_source": "openai/whisper-small",
                    "type": "AUDIO",
                },
                "engine_kwargs": engine_kwargs,
            }
        ]
    }


def load_one(**engine_kwargs):
    return load_platform_config(audio_args(**engine_kwargs)).models[0]


def test_whisper_transcribes_and_translates_by_default():
    model = load_one()
    assert model.capabilities() == [Capability.TRANSCRIPTION, Capability.TRANSLATION]
    assert model.max_upload_bytes() == 25 * 1024 * 1024


def test_local_ctc_model_transcribes_only(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "wav2vec2"}')
    args = audio_args()
    args["models"][0]["model_loading_config"]["model_source"] = str(tmp_path)
    assert load_platform_config(args).models[0].capabilities() == [Capability.TRANSCRIPTION]


def test_text_to_speech_alias_and_capability():
    model = load_one(task="tts", voices={"alloy": 0})
    assert model.engine_kwargs.task.value == "text-to-speech"
    assert model.capabilities() == [Capability.SPEECH]
    assert model.max_upload_bytes() is None


def test_queue_is_large_enough_to_fill_a_batch():
    assert load_one(max_batch_size=32).serve_options()["max_ongoing_requests"] == 32 * 16
    assert load_one(max_batch_size=1).serve_options()["max_ongoing_requests"] == 16


@pytest.mark.parametrize(
    "kwargs,path,message",
    [
        ({"task": "speech"}, "engine_kwargs.task", "speech-to-text"),
        ({"max_batch_size": 0}, "engine_kwargs.max_batch_size", "greater than or equal to 1"),
        ({"language": "English"}, "engine_kwargs.language", "pattern"),
        ({"chunk_lenght_s": 10}, "engine_kwargs.chunk_lenght_s", "chunk_length_s"),
        ({"voices": {"alloy": "x"}}, "engine_kwargs.voices.alloy", "integer"),
        ({"dtype": "float64"}, "engine_kwargs.dtype", "'auto'"),
    ],
)
def test_bad_audio_config_names_the_field(kwargs, path, message):
    with pytest.raises(ConfigError) as info:
        load_platform_config(audio_args(**kwargs))
    text = str(info.value)
    assert f"models[0].{path}" in text and message in text, text
