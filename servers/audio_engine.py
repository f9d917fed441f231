"""Audio engine: speech-to-text and text-to-speech with transformers, batched by Ray Serve
(``servers/batching.py``); the two tasks live in ``servers/audio/``."""

from __future__ import annotations

from configs.audio_models import AudioModelEntry, AudioTask
from servers.audio.speech_to_text import SpeechToText
from servers.audio.text_to_speech import TextToSpeech
from servers.batching import BatchedEngine, TaskRunner

RUNNERS: dict[AudioTask, type[TaskRunner]] = {
    AudioTask.SPEECH_TO_TEXT: SpeechToText,
    AudioTask.TEXT_TO_SPEECH: TextToSpeech,
}


class AudioEngine(BatchedEngine):
    entry: AudioModelEntry

    def create_runner(self) -> TaskRunner:
        return RUNNERS[self.kwargs.task](self.kwargs)
