"""``deploy_app.py --watch``: each save of the file with new content is applied once; and an
apply to a running platform (``--address``) that is interrupted."""

import os
import queue
import signal
import threading
import time

import deploy_app

WAIT_S = 30  # a save is seen after watchfiles' debounce (1.6 s); far more on a loaded machine


def _watching(path, applied: queue.Queue):
    stop = threading.Event()
    thread = threading.Thread(
        target=deploy_app.watch_and_apply,
        args=(str(path), lambda: applied.put(path.read_text()), stop),
    )
    thread.start()
    return stop, thread


def test_each_save_with_new_content_is_applied_once_and_unchanged_saves_are_not(
    tmp_path, capsys, monkeypatch
):
    reads: queue.Queue = queue.Queue()  # each read of the file: the watcher handled a save
    read = deploy_app._read
    monkeypatch.setattr(deploy_app, "_read", lambda p: reads.put(read(p)) or read(p))
    path = tmp_path / "model_config.yaml"
    path.write_text("models: [a]\n")
    (tmp_path / "other.yaml").write_text("x")
    applied: queue.Queue = queue.Queue()
    stop, thread = _watching(path, applied)
    try:
        _wait_for_output(capsys, "watching")
        path.write_text("models: [a]\n")  # saved without a change
        (tmp_path / "other.yaml").write_text("y")  # another file in the directory
        path.write_text("models: [a, b]\n")
        assert applied.get(timeout=WAIT_S) == "models: [a, b]\n"
        # as editors save: a new file renamed over the old (two events, one save)
        replacement = tmp_path / ".model_config.yaml.swp"
        replacement.write_text("models: [b]\n")
        os.replace(replacement, path)
        assert applied.get(timeout=WAIT_S) == "models: [b]\n"
        while not reads.empty():
            reads.get()
        _save(path, "models: [b]\n")  # saved again without a change
        # The watcher has read that save: the next one comes in a batch of its own, and is the
        # next to be applied only if the unchanged save was not.
        assert reads.get(timeout=WAIT_S) == b"models: [b]\n"
        _save(path, "models: [c]\n")
        assert applied.get(timeout=WAIT_S) == "models: [c]\n"
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive()


def _save(path, text: str) -> None:
    """Saved whole (a write in place can be read half-done, empty, by the watcher)."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def _wait_for_output(capsys, text: str) -> None:
    deadline = time.monotonic() + WAIT_S
    seen = ""
    while text not in seen and time.monotonic() < deadline:
        seen += capsys.readouterr().out
        time.sleep(0.05)
    assert text in seen, seen


def test_an_apply_to_a_running_platform_stopped_by_ctrl_c_or_sigterm_exits_without_a_traceback(
    monkeypatch, capsys
):
    def sigterm_before_it_connects(*_args, **_kwargs):
        # the handler is in place before Ray is joined: a SIGTERM then is a Ctrl-C, not the end
        # of the process
        assert signal.getsignal(signal.SIGTERM) is deploy_app._stop_on_sigterm
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises KeyboardInterrupt here

    monkeypatch.setattr(deploy_app, "deploy", sigterm_before_it_connects)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = deploy_app.main(
            ["--config", "model_config.yaml", "--address", "auto", "--no-fit-check"]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130
    assert "interrupted; the running platform keeps serving" in capsys.readouterr().err
