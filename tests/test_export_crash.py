"""A process killed in the middle of an export leaves no destination behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gemma_keras as gk
from tests.conftest import BACKEND
from tests.test_crash_safety import _wait_for

CHILD = textwrap.dedent(
    """
    import sys, time
    import gemma_keras as gk

    source, dest, fmt, marker = sys.argv[1:5]

    def pause(*args, **kwargs):
        open(marker, "w").write("writing")
        time.sleep(600)  # half the export is on disk, nothing published yet

    if fmt == "gguf":
        import gguf

        def tensors(self, *args, **kwargs):
            self.fout[0].write(b"\\0" * 4096)
            self.fout[0].flush()
            pause()

        gguf.GGUFWriter.write_tensors_to_file = tensors
    else:
        from gemma_keras.formats import keras_preset

        keras_preset.write_manifest = pause  # after the preset's own files are written
    gk.load(source).export(dest, format=fmt)
    """
)


@pytest.mark.parametrize("fmt, name", [("gguf", "m.gguf"), ("keras", "preset")])
def test_sigkill_during_export_leaves_no_destination(tiny_gguf, tiny_model, tmp_path, fmt, name):
    source, _ = tiny_gguf("gemma3")
    tiny_model("gemma3")  # converted into the shared cache, so the child only exports
    dest, marker = tmp_path / "out" / name, tmp_path / "marker"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, GEMMA_KERAS_OFFLINE="1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(source), str(dest), fmt, str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(marker, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert not os.path.lexists(dest)
    debris = list(dest.parent.glob(f".{name}.{child.pid}.*.tmp"))
    assert debris  # the half-written temporary, never renamed into place
    # The next export clears what the dead process left and publishes whole.
    lm = tiny_model("gemma3")
    lm.export(dest, format=fmt)
    assert not list(dest.parent.glob(f".{name}.*"))
    ids = lm.tokenizer.encode("hello world")
    np.testing.assert_allclose(gk.load(dest).logits(ids), lm.logits(ids), rtol=0, atol=0.01)
