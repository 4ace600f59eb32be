"""Loads build backbones without drawing random weights, and still fill every weight from the file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import gemma_keras as gk
from gemma_keras.backend.no_init import Deferred, weights_follow, weights_in_files
from gemma_keras.formats.tensor_names import fill_backbone, read_backbone
from tests.conftest import BACKEND, mapped_file


def _kernel_sum(layer) -> float:
    from keras import ops

    return float(np.abs(ops.convert_to_numpy(layer.kernel)).sum())


def _dense():
    import keras

    layer = keras.layers.Dense(4)
    layer.build((2, 3))
    return layer


def test_weights_start_at_zero_only_inside_and_only_in_that_thread():
    seen = {}
    with weights_follow():
        inside = _dense()
        thread = threading.Thread(target=lambda: seen.setdefault("other", _dense()))
        thread.start()
        thread.join()
    assert _kernel_sum(inside) == 0
    assert _kernel_sum(seen["other"]) > 0  # another thread draws random weights as usual
    assert _kernel_sum(_dense()) > 0  # and so does everything after


@pytest.mark.parametrize("case", ["writable", "not a directory", "disk full"])
def test_weights_in_files_hold_the_same_values_and_only_torch_maps_them(tmp_path, monkeypatch, case):
    """Inside `weights_in_files`, torch maps a large weight from an unlinked file in the directory;
    other backends, small weights, a directory that cannot be made and a full disk load into memory."""
    import errno

    from keras import ops

    from gemma_keras.backend import no_init

    writable = case == "writable"
    directory = tmp_path / "paged"
    if case == "not a directory":
        (tmp_path / "a-file").write_text("not a directory")
        directory = tmp_path / "a-file" / "paged"
    if case == "disk full":

        def full(fd, offset, size):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(no_init.os, "posix_fallocate", full)
    big, small = np.arange(256 * 128, dtype="float32").reshape(256, 128), np.arange(8, dtype="float32")

    def deferred(array):
        return Deferred(array.shape, array.dtype, lambda out: out.__setitem__(..., array))

    with weights_in_files(directory), weights_follow():
        import keras

        layer = keras.layers.Dense(128)
        layer.build((None, 256))
        layer.kernel.assign(deferred(big))
        layer.bias.assign(deferred(np.resize(small, 128)))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel), big)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.bias), np.resize(small, 128))
    if BACKEND == "torch":
        where = mapped_file(layer.kernel.value.data_ptr()) or ""
        assert (str(directory) in where) == writable, where
        assert str(directory) not in (mapped_file(layer.bias.value.data_ptr()) or "")  # 512 bytes: memory
        layer.kernel.assign(big * 2)  # an ordinary variable: a write copies the page it changes
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel), big * 2)


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_a_saved_and_reloaded_model_has_every_weight_of_the_original(tiny_model, tmp_path, arch):
    lm = tiny_model(arch)
    again = gk.load(lm.export(tmp_path / "preset", format="keras"))
    ours, theirs = dict(read_backbone(lm.backbone)), dict(read_backbone(again.backbone))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert np.abs(value).sum() > 0, name  # a weight left at its zero start would show here
        np.testing.assert_array_equal(theirs[name], value, err_msg=name)


def test_a_weight_the_table_does_not_fill_is_an_error(tiny_model):
    backbone = tiny_model("gemma3").backbone
    fresh = type(backbone).from_config(backbone.get_config())
    block = fresh.get_layer("decoder_block_0")
    block._tracker.unlock()  # Keras locks a built layer's state; a stray weight is the point here
    block.add_weight(shape=(2,), initializer="zeros", name="stray")
    with pytest.raises(RuntimeError, match="stray"):
        fill_backbone(fresh, dict(read_backbone(backbone)).pop, lambda *shapes: AssertionError(shapes))


def test_assign_inside_a_load_views_an_array_on_torch_instead_of_copying_it():
    """On torch, a load's `assign` views the file's array (the variable's own copy is the
    only one); everywhere else, and outside a load, Keras converts as it always did."""
    import keras

    variable = keras.Variable(np.zeros((3, 4), "float32"))
    values = np.arange(12, dtype="float32").reshape(3, 4)
    with weights_follow():
        converted = variable.assign(values)
        plain = variable._convert_to_tensor(values, dtype="float32")  # not inside an assign
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), values)
    if BACKEND != "jax":  # Keras on JAX adopts an aligned array without a copy, load or not
        values[0, 0] = 100.0  # the variable holds its own copy
        assert keras.ops.convert_to_numpy(variable)[0, 0] == 0.0
    if BACKEND == "torch":
        assert converted.data_ptr() == values.ctypes.data  # viewed, not copied
        assert plain.data_ptr() != values.ctypes.data
        assert variable.assign(values).data_ptr() != values.ctypes.data  # outside a load: copied


LOAD_PEAK = """
import os, sys
import numpy as np
import keras
from gemma_keras.backend.no_init import Deferred, weights_follow, weights_in_files

path, follow = sys.argv[1], sys.argv[2] == "1"
if not os.path.exists(path):  # the first run writes the file: one 256 MB kernel
    layer = keras.layers.Dense(8192, use_bias=False)
    layer.build((None, 8192))
    layer.kernel.assign(np.full((8192, 8192), 0.5, "float32"))
    keras.Sequential([keras.Input((8192,)), layer]).save_weights(path)
    sys.exit(0)


def status(field):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak, to the current RSS
before = status("VmRSS")
if follow:
    with weights_follow():
        model = keras.Sequential([keras.Input((8192,)), keras.layers.Dense(8192, use_bias=False)])
        model.load_weights(path)
else:
    model = keras.Sequential([keras.Input((8192,)), keras.layers.Dense(8192, use_bias=False)])
    model.load_weights(path)
peak = (status("VmHWM") - before) // 1024
kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
assert kernel.shape == (8192, 8192) and (kernel == 0.5).all(), "the kernel was not filled from the file"
print(peak)
"""


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow converts as Keras does")
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset")
def test_a_load_holds_each_weight_once_not_in_extra_copies(tmp_path):
    """Peak memory of loading one 256 MB kernel from a `.weights.h5` file, in fresh processes:
    Keras alone holds it two or three times at once (its start, the file's array, the copy the
    backend makes); inside `weights_follow()` about once."""
    path = tmp_path / "big.weights.h5"
    env = {**os.environ, "KERAS_BACKEND": BACKEND}

    def peak(follow: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", LOAD_PEAK, str(path), follow], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return int(done.stdout.strip() or 0)

    peak("0")  # writes the file
    plain, follow = peak("0"), peak("1")
    assert follow < 400, (plain, follow)  # about one 256 MB copy
    assert plain - follow > 200, (plain, follow)  # Keras alone: at least one more
