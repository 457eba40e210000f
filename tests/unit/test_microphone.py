"""``hark listen`` where audio capture is impossible: one line that says what to install, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hark import cli
from hark.client.microphone import MicrophoneError, list_input_devices, open_source


def test_without_sounddevice_the_hint_is_the_mic_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` raises ImportError
    with pytest.raises(MicrophoneError, match=r"pip install 'hark\[mic\]'"):
        list_input_devices()


def _without_portaudio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """sounddevice as it is where PortAudio is missing: its import raises OSError."""
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)


def test_without_portaudio_the_hint_is_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _without_portaudio(monkeypatch, tmp_path)
    with pytest.raises(MicrophoneError, match="libportaudio2"):
        open_source(None)


@pytest.mark.parametrize("argv", [["listen"], ["listen", "--list-devices"]])
def test_listen_without_portaudio_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _without_portaudio(monkeypatch, tmp_path)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(
        "hark: error: the microphone needs the PortAudio library"
    )


def test_a_file_device_that_is_missing_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["listen", "--device", f"file:{tmp_path / 'missing.wav'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"hark: error: {tmp_path / 'missing.wav'}: no such file\n"
