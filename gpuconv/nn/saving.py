"""One file per model: ``model.save(path)`` and ``gpuconv.load_model(path)``.

The file is a zip archive of
- ``model.json``: the format and its version, gpuconv's version, the architecture
  (``Sequential.get_config``), the compile settings (optimizer class, arguments and step count;
  loss; metrics), the shuffle seed, and a manifest of every array member (shape, dtype);
- ``weights/<layer>/<name>.npy``: every weight and state array;
- ``optimizer/<parameter index>/<slot>.npy``: the optimizer's slots (Adam's moments, SGD's velocity).

Loading trusts nothing in the file: the JSON is checked field by field, every member against the
manifest and the rebuilt model (names, shapes, real floating-point dtypes), and every member's CRC
is verified on reading. Arrays are read with ``allow_pickle=False``. A damaged, truncated or edited
file raises ValueError naming the file; the write is atomic (temporary file, then rename).
"""
import io
import json
import os
import zipfile

import numpy as np

from gpuconv import backend, config, rng
from gpuconv.fileio import atomic_write
from gpuconv.nn import losses, optimizers

FORMAT, VERSION = "gpuconv.model", 1
REFUSED_SUFFIXES = {".h5": "HDF5", ".hdf5": "HDF5", ".npz": "a weights archive (use save_weights)"}
MAX_JSON_BYTES = 16 << 20


def save_model(model, path):
    """Write ``model`` (a built ``Sequential``) to ``path``: see the module's docstring for the layout."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in REFUSED_SUFFIXES:
        raise ValueError(f"model.save writes gpuconv's own zip format, not {REFUSED_SUFFIXES[suffix]}; choose a path "
                         f"ending in '.gpuconv' (got {path!r})")
    model.build()
    arrays = {f"weights/{key}.npy": backend.to_host(array) for key, array in model.weight_arrays().items()}
    compiled = None
    if model.optimizer is not None:
        optimizer = model.optimizer
        for index, parameter in enumerate(model.parameters()):
            for slot, value in optimizer.state.get(id(parameter), {}).items():
                arrays[f"optimizer/{index}/{slot}.npy"] = backend.to_host(value)
        loss = model.loss.get_config() if hasattr(model.loss, "get_config") else None
        compiled = {"optimizer": {"class_name": type(optimizer).__name__, "config": optimizer.get_config(),
                                  "iterations": optimizer.iterations},
                    "loss": loss, "metrics": list(model.metrics)}
    from gpuconv import __version__
    document = {"format": FORMAT, "version": VERSION, "gpuconv_version": __version__, "model": model.get_config(),
                "compile": compiled, "shuffle_seed": model.shuffle_seed,
                "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}}

    def write(file):
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("model.json", json.dumps(document, indent=1))
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
                archive.writestr(name, buffer.getvalue())
    atomic_write(path, write)


def load_model(path, compile=True):
    """The model saved at ``path``, with its weights and (``compile=True``) its optimizer state, so that
    ``fit(..., initial_epoch=k)`` continues the saved run exactly. Does not move gpuconv's random generator."""
    from gpuconv.nn.model import Sequential
    document, arrays = _read(path)
    dtypes = {a.dtype for name, a in arrays.items() if name.startswith("weights/")}
    if len(dtypes) > 1:
        raise ValueError(f"{path}: the weights mix dtypes {sorted(map(str, dtypes))}")
    saved_floatx = config.floatx()
    try:
        with rng.preserved():
            config.set_floatx(str(dtypes.pop()) if dtypes else saved_floatx)  # the model comes back in its dtype
            model = Sequential.from_config(document["model"])
            model.build()
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: the saved architecture cannot be rebuilt ({error})") from None
    finally:
        config.set_floatx(saved_floatx)
    seed = document["shuffle_seed"]
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise ValueError(f"{path}: shuffle_seed must be an int in [0, 2**63), got {seed!r}")
    model.shuffle_seed = seed
    own = model.weight_arrays()
    weights = {key: arrays.pop(f"weights/{key}.npy", None) for key in own}
    missing = sorted(key for key, value in weights.items() if value is None)
    wrong = [f"{key}: file {weights[key].shape}, model {tuple(own[key].shape)}" for key in own
             if weights[key] is not None and weights[key].shape != tuple(own[key].shape)]
    if missing or wrong:
        raise ValueError(f"{path}: the weights do not match the saved architecture: missing {missing}, "
                         f"shape mismatches {wrong}")
    model._replace_all({key: backend.to_device(value) for key, value in weights.items()})
    if compile and document["compile"] is not None:
        _restore_compile(model, document["compile"], arrays, path)  # takes the optimizer members it uses
    stray = sorted(name for name in arrays if not name.startswith("optimizer/"))
    if stray:
        raise ValueError(f"{path}: unexpected members {stray}")
    return model


def _restore_compile(model, compiled, arrays, path):
    try:
        spec = compiled["optimizer"]
        optimizer_class = optimizers.OPTIMIZERS[spec["class_name"].lower()]
        optimizer = optimizer_class(**spec["config"])
        iterations = spec["iterations"]
        if not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"optimizer iterations must be an int >= 0, got {iterations!r}")
        optimizer.iterations = iterations
        loss = compiled["loss"]
        loss_object = None if loss is None else losses.LOSSES[loss["name"]](from_logits=loss["from_logits"])
        metrics = compiled["metrics"]
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: the saved compile settings are not valid ({error!r})") from None
    if loss_object is None:
        return  # a custom loss cannot be restored: the model comes back uncompiled
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the softmax/from_logits advice was given when the model was compiled
        model.compile(optimizer, loss_object, metrics)
    parameters = model.parameters()
    for name in [n for n in arrays if n.startswith("optimizer/")]:
        _, index, slot = name[:-4].split("/")
        if not index.isdigit() or int(index) >= len(parameters) or \
                arrays[name].shape != tuple(parameters[int(index)].shape):
            raise ValueError(f"{path}: optimizer member {name} does not match the model's parameters")
        parameter = parameters[int(index)]
        optimizer.state.setdefault(id(parameter), {})[slot] = backend.to_device(arrays.pop(name))


def _read(path):
    """(document, {member: array}) from a model file, every part checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo("model.json")
            except KeyError:
                raise ValueError("it has no model.json; was it written by model.save?") from None
            if info.file_size > MAX_JSON_BYTES:
                raise ValueError(f"model.json is {info.file_size} bytes, more than the {MAX_JSON_BYTES} allowed")
            document = json.loads(archive.read("model.json").decode("utf-8"))
            _check_document(document)
            members = set(archive.namelist()) - {"model.json"}
            manifest = document["arrays"]
            if members != set(manifest):
                raise ValueError(f"its members {sorted(members)} differ from its manifest {sorted(manifest)}")
            arrays = {}
            for name, meta in manifest.items():
                if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list) or \
                        not isinstance(meta.get("dtype"), str):
                    raise ValueError(f"manifest entry {name!r} must give a shape and a dtype")
                dtype = np.dtype(meta["dtype"])
                if dtype.kind != "f":
                    raise ValueError(f"member {name} has dtype {dtype}; only real floating point is accepted")
                expected = int(np.prod(meta["shape"], dtype=np.int64)) * dtype.itemsize
                if archive.getinfo(name).file_size > expected + 4096:
                    raise ValueError(f"member {name} is larger than its manifest's shape {meta['shape']} allows")
                array = np.lib.format.read_array(io.BytesIO(archive.read(name)), allow_pickle=False)
                if list(array.shape) != meta["shape"] or array.dtype != dtype:
                    raise ValueError(f"member {name} holds {array.dtype} {array.shape}, its manifest says "
                                     f"{meta['dtype']} {meta['shape']}")
                arrays[name] = array
            return document, arrays
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, json.JSONDecodeError, UnicodeDecodeError,
            ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable gpuconv model file: {error}") from None


def _check_document(document):
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"model.json does not declare the format {FORMAT!r}")
    if document.get("version") != VERSION:
        raise ValueError(f"format version {document.get('version')!r}; this gpuconv reads version {VERSION}")
    for key, kind in (("model", dict), ("arrays", dict)):
        if not isinstance(document.get(key), kind):
            raise ValueError(f"model.json's {key!r} must be a {kind.__name__}")
    if document.get("compile") is not None and not isinstance(document["compile"], dict):
        raise ValueError("model.json's 'compile' must be an object or null")
    document.setdefault("shuffle_seed", None)
