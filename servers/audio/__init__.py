"""The two tasks of the audio engine (``servers/audio_engine.py``): each loads its model
and turns checked requests into batched model calls."""
