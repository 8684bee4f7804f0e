"""The client must install and run where torch is absent: importing it must never pull torch in.

Checked in a fresh interpreter, because this test process may already have torch loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "spec_whisper")

PROBE = f"""
import sys
import spec_whisper_client, spec_whisper_client.aio, spec_whisper_client.cli
try:
    spec_whisper_client.cli.main(["transcribe", "--help"])
except SystemExit:
    pass
loaded = [name for name in {HEAVY!r} if name in sys.modules]
print("LOADED", loaded, file=sys.stderr)
sys.exit(1 if loaded else 0)
"""


def test_import_and_cli_help_never_import_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stderr
    assert "exit codes:" in done.stdout


@pytest.mark.parametrize("command", ["module", "script"])
def test_entry_points_run(command: str) -> None:
    if command == "module":
        argv = [sys.executable, "-m", "spec_whisper_client", "--help"]
    else:
        # The console script sits next to the interpreter of the environment it was installed in.
        script = Path(sys.executable).with_name("spec-whisper")
        if not script.exists():
            pytest.fail(f"spec-whisper is not installed next to {sys.executable} (pip install -e client)")
        argv = [str(script), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: spec-whisper" in done.stdout
