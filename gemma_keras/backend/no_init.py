"""Builds and loads Keras models without work or memory that the load throws away.

A KerasHub backbone draws every weight from its initializer when it is
built, and every load then overwrites them all with the file's values. On
the 270M that draw took about 4.7 s of a warm JAX load (3.6 s of it
compiling XLA random kernels, one per shape). Inside `weights_follow()`,
`Layer.add_weight` starts each weight at zeros instead. Only loads use it, and
only around a build whose every weight is then filled from a file (a
KerasHub `from_preset`, `convert.build_backbone`, `keras_preset.rebuild`); a
weight the file lacks makes those loads fail, so none is left at zero.
Outside it, and in other threads, Keras is unchanged: LoRA and anything a user
builds still draw random weights.

Inside it, the weights also go from the file to the variables without
copies in between (the 270M's float32 weights are 1.07 GB; its embedding
alone 671 MB):

- Keras' `.weights.h5` store hands each layer a `Deferred`,
  which is read from the file only when it is assigned (`__array__` reads it
  for any other use). A GGUF load hands over its tensors the same way, each
  dequantized when it is assigned (`sources.convert`).
- torch: `assign` reads it straight into the variable's CPU memory, and
  views a NumPy array of the variable's dtype with `torch.from_numpy` where
  Keras' `convert_to_tensor` would copy it before `assign` copies it again.
- JAX: the zeros come from anonymous pages that JAX adopts without
  copying (`jax.device_put` of a page-aligned array), so they cost
  neither time nor resident memory until the file overwrites them; and
  `assign` reads each weight into such a buffer and adopts it the same way.
  Before, every zero was written by an XLA program and every weight was
  copied from NumPy into a new JAX buffer.

Measured on the embedded 270M (2-core CPU, peak RSS of a process that loads
and generates): torch 2,196 → 1,491 MB; JAX: docs/benchmarks.md.
TensorFlow converts as Keras does.

`weights_in_files()` goes further on torch, for a model that computes with
other weights (a GGUF's kept blocks): its large weights live in files the
kernel pages in where they are read (2,330 → 1,260 MB peak on the 270M).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

_active = threading.local()
_install_lock = threading.Lock()
_installed = False
# Inside `weights_in_files()`, torch weights of at least this size go to files; norms stay in memory.
_FILE_MIN_BYTES = 1 << 16


class Deferred:
    """`shape` and `dtype` of an array that `read(out)` writes into a C-contiguous `out`."""

    def __init__(self, shape: tuple[int, ...], dtype, read: Callable[[np.ndarray], None]):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.read = read

    def __array__(self, dtype=None, copy=None):
        out = _fresh_pages(self.shape, self.dtype)
        self.read(out)
        return out if dtype is None else out.astype(dtype, copy=False)

    def then(self, change: Callable[[np.ndarray], np.ndarray], view=None) -> Deferred:
        """The array `change(array)` gives, read as late; `change` must be a reshape or a transpose.

        `view(out)`, when given, is `out` seen in this array's shape, and this
        array is read straight through it; only for a `read` that writes into
        arrays of any strides.
        """
        # A zero-strided array has the shape and costs nothing: `change` tells its new shape.
        shape = change(np.broadcast_to(np.zeros((), self.dtype), self.shape)).shape

        def read(out: np.ndarray) -> None:
            if view is not None:
                self.read(view(out))
            else:
                out[...] = change(np.asarray(self))

        return Deferred(shape, self.dtype, read)


def _loading() -> bool:
    return bool(getattr(_active, "depth", 0))


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        import keras
        from keras.layers import Layer

        original = Layer.add_weight
        backend = keras.backend.backend()

        @functools.wraps(original)
        def add_weight(self, *args, **kwargs):
            if _loading():
                zeros = _zeros(backend)
                if len(args) > 1:  # Keras 2 style: add_weight(shape, initializer, ...)
                    args = (args[0], zeros, *args[2:])
                else:
                    kwargs["initializer"] = zeros
            return original(self, *args, **kwargs)

        Layer.add_weight = add_weight
        _install_assign(keras.backend.backend())  # every backend: a `Deferred` becomes an array at least
        if keras.backend.backend() in ("jax", "torch"):
            _install_stored_weights()
        _installed = True


def _fresh_pages(shape, dtype):
    """A C-contiguous, zero-filled NumPy array on pages of its own, untouched until written.

    Anonymous memory from the kernel: page-aligned (XLA's CPU client adopts
    it without a copy) and zero until a page is first written, so zeros cost
    nothing. Not numpy's allocator: it asks for transparent huge pages for
    arrays of 4 MB and more, and filling a weight then stalls on the kernel
    compacting memory to find them (about 3 s of a 270M load on JAX here,
    with decode no faster for it).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = mmap.mmap(-1, max(size, 1))
    return np.frombuffer(buffer, np.uint8, size).view(dtype).reshape(shape)


def _zeros(backend: str):
    if backend == "jax":
        return _jax_zeros
    if backend == "torch" and _files() is not None:
        return _torch_zeros
    return "zeros"


def _files() -> Path | None:
    return getattr(_active, "files", None)


def _torch_zeros(shape, dtype=None):
    """Zeros on `_fresh_pages`: a weight that moves to a file (`weights_in_files`) never touches them."""
    import keras
    import torch

    kind = getattr(torch, keras.backend.standardize_dtype(dtype or "float32"))
    count = int(np.prod(shape, dtype=np.int64))
    raw = _fresh_pages((count * kind.itemsize,), np.uint8)
    return torch.from_numpy(raw).view(kind).reshape(tuple(shape))


def _numpy_dtype(dtype):
    import keras
    import ml_dtypes

    name = keras.backend.standardize_dtype(dtype)
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _jax_zeros(shape, dtype=None):
    """Zeros that JAX adopts from `_fresh_pages`: no page is touched until the file's weight replaces them."""
    import jax

    return jax.device_put(_fresh_pages(tuple(shape), _numpy_dtype(dtype or "float32")))


def _read_into(variable, value: Deferred, backend: str) -> bool:
    """Reads `value` into `variable`'s memory (torch) or a buffer it adopts (JAX); False where it cannot."""
    if tuple(variable.shape) != value.shape or _numpy_dtype(variable.dtype) != value.dtype:
        return False
    if backend == "torch":
        import torch

        target = getattr(variable, "_value", None)
        if not isinstance(target, torch.Tensor) or target.device.type != "cpu" or not target.is_contiguous():
            return False
        paged = _in_file(value) if target.nbytes >= _FILE_MIN_BYTES else None
        if paged is not None:  # the zeros it had were never touched
            target.data = torch.from_numpy(paged).view(target.dtype).reshape(target.shape)
            return True
        with torch.no_grad():
            value.read(target.detach().numpy())
        return True
    if backend != "jax":
        return False
    import jax

    if getattr(variable, "_layout", None) is not None or jax.default_backend() != "cpu":
        return False  # a sharded or accelerator variable: Keras places the array itself
    buffer = _fresh_pages(value.shape, value.dtype)
    value.read(buffer)
    variable._direct_assign(jax.device_put(buffer))
    return True


def _in_file(value: Deferred) -> np.ndarray | None:
    """`value`'s bytes, read into an unlinked file under `weights_in_files`' directory, mapped copy-on-write.

    None outside `weights_in_files()`, or where the file cannot be written
    (then the rest of the load keeps its weights in memory). The value is
    written through a shared mapping that is closed at once: its pages stay
    in the file, and none of the copy-on-write mapping's is touched here.
    """
    directory = _files()
    if directory is None:
        return None
    size = value.dtype.itemsize * int(np.prod(value.shape, dtype=np.int64))
    try:
        with tempfile.TemporaryFile(dir=directory) as handle:  # O_TMPFILE: no name, gone with the process
            os.posix_fallocate(handle.fileno(), 0, size)  # blocks now, not on each page's first write
            shared = mmap.mmap(handle.fileno(), size)
            value.read(np.frombuffer(shared, value.dtype).reshape(value.shape))
            with contextlib.suppress(BufferError):  # a reader that kept a view: unmapped once it lets go
                shared.close()  # its pages leave the process; the file keeps them
            pages = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
    except OSError:
        _active.files = None
        return None
    return np.frombuffer(pages, np.uint8)


def _install_assign(backend: str) -> None:
    import keras

    variable_class = keras.Variable
    original_assign = variable_class.assign
    original_convert = getattr(variable_class, "_convert_to_tensor", None)
    # Private Keras methods: without them, loads copy as Keras always did.
    direct = original_convert is not None and hasattr(variable_class, "_direct_assign")

    @functools.wraps(original_assign)
    def assign(self, value):
        if not _loading():
            return original_assign(self, value)
        if isinstance(value, Deferred):
            if direct and _read_into(self, value, backend):
                return self.value
            value = np.asarray(value)
        _active.assigning = True
        try:
            return original_assign(self, value)
        finally:
            _active.assigning = False

    variable_class.assign = assign
    if backend != "torch" or not direct:
        return
    import torch

    # Only `assign` copies what it converts; a variable built from an array keeps it.
    @functools.wraps(original_convert)
    def _convert_to_tensor(self, value, dtype=None):
        if (
            getattr(_active, "assigning", False)
            and type(value) is np.ndarray
            and value.dtype.kind in "fiu"  # not ml_dtypes' bfloat16, which torch cannot view
            and value.flags.c_contiguous
            and value.flags.writeable  # torch.from_numpy needs it, and only the load holds the array
            and dtype is not None
            and value.dtype.name == keras.backend.standardize_dtype(dtype)
        ):
            return torch.from_numpy(value)  # assign copies it into the variable (onto its device)
        return original_convert(self, value, dtype)

    variable_class._convert_to_tensor = _convert_to_tensor


def _install_stored_weights() -> None:
    """Inside `weights_follow()`, Keras' h5 store hands out `Deferred` reads instead of arrays."""
    from keras.src.saving import saving_lib

    store = getattr(saving_lib, "H5IOStore", None)
    if store is None or not hasattr(saving_lib, "safe_get_h5_dataset"):  # another Keras: arrays, as before
        return
    original = store.__getitem__

    @functools.wraps(original)
    def getitem(self, key):
        # Only the plain store: a sharded one switches files after each read.
        if not _loading() or type(self) is not store:
            return original(self, key)
        dataset = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key)
        if (
            "dtype" in dataset.attrs or dataset.dtype.kind not in "fiub"
        ):  # bfloat16 (bytes): Keras' own reading
            return original(self, key)
        return Deferred(dataset.shape, dataset.dtype, dataset.read_direct)

    store.__getitem__ = getitem


@contextlib.contextmanager
def weights_in_files(directory: Path) -> Iterator[None]:
    """torch on a CPU: the large weights a load fills inside live in files under `directory`.

    Each such weight is written to an unlinked file and mapped copy-on-write
    (`MAP_PRIVATE`), so its pages enter the process only where something
    reads them, and the kernel can drop clean ones again under memory
    pressure, as it does for a file llama.cpp maps. Reads and writes see
    ordinary tensors: a write copies the page it changes. For a model that
    multiplies by other weights (`quantize="gguf"`: the GGUF's own blocks),
    the float32 kernels and most of the embedding table are then never
    resident. Elsewhere, and where `directory` cannot be written, weights
    load into memory as usual.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = None
    previous = _files()
    _active.files = directory
    try:
        yield
    finally:
        _active.files = previous


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Weights built inside start at zeros: the caller fills every one of them next."""
    _install()
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1
