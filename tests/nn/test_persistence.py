"""model.save / gpuconv.load_model: one file, exact resumption, no pickle, refusal of damaged files;
save_weights' suffix."""
import io
import json
import zipfile

import numpy as np
import pytest

import gpuconv
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D


def build(seed=0):
    gpuconv.set_seed(seed)
    model = gpuconv.Sequential([
        Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 8, 8)), BatchNormalization(),
        MaxPool2D(2), Flatten(), Dropout(0.25), Dense(16, activation="relu"), Dense(3, activation="softmax")])
    model.compile(gpuconv.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", ["accuracy"])
    return model


@pytest.fixture
def data(rng):
    return rng.standard_normal((96, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 96)


def test_resume_is_bit_exact(data, tmp_path):
    """2 epochs, save, load, 1 more == 3 epochs straight, bit for bit (Adam moments, step count, learning
    rate, moving statistics, the shuffle order and, in one process, dropout's random stream)."""
    x, y = data
    straight = build()
    straight.fit(x, y, batch_size=16, epochs=3, verbose=0)

    first = build()
    first.fit(x, y, batch_size=16, epochs=2, verbose=0)
    first.save(tmp_path / "run.gpuconv")
    resumed = gpuconv.load_model(tmp_path / "run.gpuconv")
    assert resumed.optimizer.iterations == 12 and type(resumed.optimizer) is gpuconv.optimizers.Adam
    history = resumed.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, verbose=0)
    assert history.epoch == [2]
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    # and the optimizer was not restarted: a fresh Adam from the saved weights ends elsewhere
    restarted = gpuconv.load_model(tmp_path / "run.gpuconv", compile=False)
    restarted.compile(gpuconv.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", ["accuracy"])
    restarted.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(straight.get_weights(), restarted.get_weights()))


def test_load_restores_architecture_weights_and_settings(data, tmp_path):
    x, y = data
    model = build()
    model.fit(x, y, epochs=1, verbose=0)
    model.optimizer.learning_rate = 1.25e-3
    path = tmp_path / "m.keras"  # any suffix but the weight formats'
    model.save(path)
    loaded = gpuconv.load_model(path)
    assert loaded.to_json() == model.to_json()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.optimizer.learning_rate == 1.25e-3 and loaded.metrics == ["accuracy"]
    assert gpuconv.models.model_from_json(model.to_json()).get_config() == model.get_config()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert names[0] == "model.json" and all(n.endswith(".npy") for n in names[1:])
    assert any(n.startswith("optimizer/") for n in names)


def corrupt(path, edit):
    """Rewrite the archive at ``path`` with ``edit(name, bytes) -> bytes or None`` (None drops the member)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members:
            content = edit(name, content)
            if content is not None:
                archive.writestr(name, content)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable gpuconv model file"),
    ("flip_byte", "Bad CRC-32"),
    ("unknown_layer", "unknown layer class 'Lambda'"),
    ("pickled_member", "only real floating point"),
    ("missing_member", "differ from its manifest"),
    ("wrong_shape", "shape mismatches|manifest says"),
    ("not_zip", "not a readable gpuconv model file"),
])
def test_damaged_files_are_refused_by_name(data, tmp_path, damage, message):
    path = tmp_path / "m.gpuconv"
    build().save(path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "flip_byte":  # inside a stored array member: zip's CRC catches it
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("weights/dense/kernel.npy")
        offset = info.header_offset + 30 + len(info.filename) + 200
        path.write_bytes(raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1:])
    elif damage == "unknown_layer":
        def edit(name, content):
            if name != "model.json":
                return content
            document = json.loads(content)
            document["model"]["layers"][2]["class_name"] = "Lambda"
            return json.dumps(document)
        corrupt(path, edit)
    elif damage == "pickled_member":
        def edit(name, content):
            if name == "model.json":
                document = json.loads(content)
                document["arrays"]["weights/dense/bias.npy"]["dtype"] = "|O"
                return json.dumps(document)
            if name == "weights/dense/bias.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.array([print] * 16, dtype=object), allow_pickle=True)
                return buffer.getvalue()
            return content
        corrupt(path, edit)
    elif damage == "missing_member":
        corrupt(path, lambda name, content: None if name == "weights/dense/bias.npy" else content)
    elif damage == "wrong_shape":
        def edit(name, content):
            if name == "weights/dense/bias.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.zeros(17, np.float32))
                return buffer.getvalue()
            return content
        corrupt(path, edit)
    elif damage == "not_zip":
        path.write_bytes(b"\x80\x04K\x01." + raw[:100])  # a pickle's first bytes
    with pytest.raises(ValueError, match=message) as error:
        gpuconv.load_model(path)
    assert str(path) in str(error.value)


def test_save_refuses_weight_formats_and_is_atomic(data, tmp_path, monkeypatch):
    model = build()
    for name in ("m.h5", "m.hdf5", "m.npz"):
        with pytest.raises(ValueError, match="choose a path ending in '.gpuconv'"):
            model.save(tmp_path / name)
    with pytest.raises(ValueError, match="save_weights writes a NumPy .npz archive"):
        model.save_weights(tmp_path / "w.weights.h5")
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "m.gpuconv"
    model.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(np.lib.format, "write_array", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        build(seed=1).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.gpuconv"]


def test_float64_model_round_trips(tmp_path, rng):
    gpuconv.config.set_floatx("float64")
    try:
        model = gpuconv.Sequential([Dense(2, activation="softmax", input_shape=(3,))])
        model.compile("sgd", "categorical_crossentropy")
    finally:
        gpuconv.config.set_floatx("float32")
    assert model.get_weights()[0].dtype == np.float64
    model.save(tmp_path / "m.gpuconv")
    loaded = gpuconv.load_model(tmp_path / "m.gpuconv")
    assert loaded.get_weights()[0].dtype == np.float64 and gpuconv.config.floatx() == "float32"
    x = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
