"""Checkpoints: `save(path, module, optimizer=None, **meta)`, `load(path)`, `load_into(...)`.

A checkpoint is an ordinary `.npz` archive that holds only numeric arrays, so reading one
never runs code (`np.load(..., allow_pickle=False)`):

    __fastmod__              uint8 array: UTF-8 JSON header (format, version, the model's key
                             order, the optimizer's type, param_groups and scalar state, meta)
    model/<name>             one array per state_dict entry (torch's dotted names)
    optim/<index>/<name>     one array per array-valued optimizer state entry

It is written atomically: to a temporary file in the same directory, flushed to disk, then
renamed over `path` (os.replace), so a crash or an error during save leaves the previous
checkpoint untouched.
"""
import json
import os
import tempfile
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load", "load_into", "Checkpoint", "CheckpointError", "CheckpointDtypeError"]

FORMAT = "fastmod-checkpoint"
VERSION = 1
HEADER = "__fastmod__"


class CheckpointError(ValueError):
    """A file that is not a readable fastmod checkpoint, or one that does not fit the model."""


class CheckpointDtypeError(CheckpointError, TypeError):
    """A checkpoint that fits the model except for the dtypes of its arrays: a CheckpointError
    that is also a TypeError (a dtype mismatch is a TypeError, SPEC §4)."""


class Checkpoint:
    """What `load` returns.

    Attributes:
        path: the file read.
        state_dict: OrderedDict {name: array}, the module's state_dict as saved.
        optimizer: the optimizer's state_dict ({'state': ..., 'param_groups': ...}) or None.
        optimizer_type: the optimizer's class name (e.g. 'SGD') or None.
        meta: the JSON-serializable keyword arguments given to save (a dict).

    Also readable as a mapping: ckpt['state_dict'], ckpt['optimizer'], ckpt['meta'].
    """

    def __init__(self, path, state_dict, optimizer, optimizer_type, meta, version):
        self.path = path
        self.state_dict = state_dict
        self.optimizer = optimizer
        self.optimizer_type = optimizer_type
        self.meta = meta
        self.version = version

    _keys = ("state_dict", "optimizer", "optimizer_type", "meta")

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return list(self._keys)

    def __repr__(self):
        return (f"Checkpoint({self.path!r}, {len(self.state_dict)} arrays, "
                f"optimizer={self.optimizer_type}, meta keys={sorted(self.meta)})")


# ------------------------------------------------------------------------------- saving
def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON-serializable")


def _to_json(obj, what):
    try:
        return json.dumps(obj, default=_json_default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: {what} is not JSON-serializable ({e}); pass numbers, strings, "
                        "lists and dicts") from None


def _plain_array(v, what):
    if hasattr(v, "detach") and hasattr(v, "numpy"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype.hasobject or a.dtype.kind not in "biufc":
        raise TypeError(f"save: {what} has dtype {a.dtype}; only numeric arrays can be saved "
                        "without pickle")
    return a if a.flags.c_contiguous else a.copy(order="C")    # (ascontiguousarray makes 0-d 1-d)


def _optimizer_payload(optimizer, arrays):
    """optimizer.state_dict() -> JSON-able dict; its arrays go into `arrays`."""
    sd = optimizer.state_dict()
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise TypeError(f"save: optimizer.state_dict() must return {{'state', 'param_groups'}}, "
                        f"got {type(sd).__name__}")
    scalars = {}
    array_names = {}
    for idx, st in sd["state"].items():
        idx = int(idx)
        scalars[str(idx)] = {}
        array_names[str(idx)] = []
        for name, v in st.items():
            if hasattr(v, "detach") and hasattr(v, "numpy"):      # a torch tensor
                v = v.detach().cpu().numpy()
            if isinstance(v, np.ndarray):
                arrays[f"optim/{idx}/{name}"] = _plain_array(v, f"optimizer state {idx}['{name}']")
                array_names[str(idx)].append(name)
            else:
                if isinstance(v, np.generic):
                    v = v.item()
                scalars[str(idx)][name] = v
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return {"type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars,
            "arrays": array_names}


def save(path, module, optimizer=None, **meta):
    """Write `module`'s state_dict (and `optimizer`'s state, and `meta`) to `path` atomically.

    Args:
        path: the file to write (conventionally ending in .npz; the name is used as given).
        module: a fastmod Module (or anything with state_dict() -> {name: array}).
        optimizer: a fastmod.optim optimizer whose state_dict() to store (for resuming).
        **meta: JSON-serializable values kept with the weights (epoch, accuracy, config,
            a scheduler's state_dict(), ...). NumPy scalars and arrays become numbers / lists.

    The previous content of `path`, if any, is replaced only once the new file is complete.

    Example:
        >>> import fastmod, tempfile, os
        >>> model = fastmod.nn.Linear(4, 2)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> fastmod.save(path, model, epoch=3)
        >>> fastmod.load(path).meta
        {'epoch': 3}
    """
    path = os.fspath(path)
    if not hasattr(module, "state_dict"):
        raise TypeError(f"save: expected a Module with state_dict(), got {type(module).__name__}")
    sd = module.state_dict()
    arrays = OrderedDict()
    for k, v in sd.items():
        arrays[f"model/{k}"] = _plain_array(v, f"state_dict entry {k!r}")
    header = {"format": FORMAT, "version": VERSION, "model_keys": list(sd),
              "module_type": type(module).__name__}
    if optimizer is not None:
        if not hasattr(optimizer, "state_dict"):
            raise TypeError(f"save: expected an optimizer with state_dict(), got "
                            f"{type(optimizer).__name__}")
        header["optimizer"] = _optimizer_payload(optimizer, arrays)
    for k in meta:
        _to_json(meta[k], f"meta[{k!r}]")
    header["meta"] = meta
    text = _to_json(header, "the checkpoint header")
    arrays[HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _atomic_savez(path, arrays)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_savez(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: directory {directory!r} does not exist (for {path!r})")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give the checkpoint the permissions a plain open() would
        try:
            mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_current_umask()
            os.chmod(tmp, mode)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:                                   # make the rename itself durable (POSIX)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ------------------------------------------------------------------------------- loading
def _fail(path, problem):
    raise CheckpointError(f"{path}: {problem}")


def load(path):
    """Read a checkpoint written by `save`; returns a `Checkpoint` (state_dict, optimizer, meta).

    Raises CheckpointError (a ValueError) naming the file when it is truncated, corrupt, not a
    zip/npz archive, an npz that fastmod did not write, or from a newer format version.
    """
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 -- any parse failure means "not a checkpoint"
        _fail(path, f"not a readable .npz checkpoint (truncated or corrupt?): "
                    f"{type(e).__name__}: {e}")
    if not isinstance(npz, np.lib.npyio.NpzFile):
        _fail(path, "is a single .npy array, not a fastmod checkpoint (.npz written by fastmod.save)")
    try:
        with npz:
            files = set(npz.files)
            if HEADER not in files:
                _fail(path, f"not a fastmod checkpoint: the .npz has no '{HEADER}' entry "
                            f"(entries: {sorted(files)[:5]}{' ...' if len(files) > 5 else ''})")
            arrays = {k: npz[k] for k in npz.files}    # reads (and CRC-checks) every member
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        _fail(path, f"truncated or corrupt checkpoint ({type(e).__name__}: {e})")
    try:
        header = json.loads(bytes(arrays.pop(HEADER)).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        _fail(path, f"corrupt checkpoint header ({e})")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        _fail(path, f"not a fastmod checkpoint (header format {header.get('format') if isinstance(header, dict) else header!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        _fail(path, f"checkpoint format version {version!r} is newer than this fastmod reads "
                    f"({VERSION}); upgrade fastmod")
    state_dict = OrderedDict()
    for k in header.get("model_keys", []):
        a = arrays.pop(f"model/{k}", None)
        if a is None:
            _fail(path, f"corrupt checkpoint: the header lists model entry {k!r} but the file has no array for it")
        state_dict[k] = a
    optimizer = opt_type = None
    if "optimizer" in header:
        o = header["optimizer"]
        opt_type = o.get("type")
        state = {}
        for idx, names in o.get("arrays", {}).items():
            st = dict(o.get("scalars", {}).get(idx, {}))
            for name in names:
                a = arrays.pop(f"optim/{idx}/{name}", None)
                if a is None:
                    _fail(path, f"corrupt checkpoint: optimizer state {idx}['{name}'] is missing")
                st[name] = a
            state[int(idx)] = st
        for idx, sc in o.get("scalars", {}).items():
            state.setdefault(int(idx), dict(sc))
        groups = []
        for g in o.get("param_groups", []):
            groups.append({k: (tuple(v) if k == "betas" and isinstance(v, list) else v)
                           for k, v in g.items()})
        optimizer = {"state": state, "param_groups": groups}
    extra = [k for k in arrays]
    if extra:
        _fail(path, f"corrupt checkpoint: unexpected entries {extra[:5]}")
    return Checkpoint(path, state_dict, optimizer, opt_type, header.get("meta", {}), version)


def _fit_error(e):
    """CheckpointError, or CheckpointDtypeError when load_state_dict's error `e` was about dtypes
    only (a TypeError that is no ValueError)."""
    return CheckpointDtypeError if isinstance(e, TypeError) and not isinstance(e, ValueError) \
        else CheckpointError


def load_into(path, module, optimizer=None, strict=True):
    """Load a checkpoint into `module` (and `optimizer`); returns the `Checkpoint` (for meta).

    Keys, shapes and dtypes are checked by module.load_state_dict (strict by default) and the
    optimizer's structure by its load_state_dict; every error names the file. All or nothing:
    when either does not fit, neither the module nor the optimizer is changed.

    Example:
        >>> import fastmod, tempfile, os
        >>> a, b = fastmod.nn.Linear(4, 2), fastmod.nn.Linear(4, 2)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> fastmod.save(path, a, step=10)
        >>> fastmod.load_into(path, b).meta["step"]
        10
    """
    ckpt = load(path)
    if optimizer is not None:
        if ckpt.optimizer is None:
            _fail(ckpt.path, "the checkpoint has no optimizer state (it was saved without an optimizer)")
        if ckpt.optimizer_type != type(optimizer).__name__:
            _fail(ckpt.path, f"the checkpoint holds {ckpt.optimizer_type} state, cannot load it "
                             f"into {type(optimizer).__name__}")
    # all or nothing: the optimizer (checked first) is restored when the module does not fit
    previous = None
    if optimizer is not None:
        previous = optimizer.state_dict()
        try:
            optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, TypeError) as e:
            raise _fit_error(e)(f"{ckpt.path}: optimizer state does not fit: {e}") from e
    try:
        module.load_state_dict(ckpt.state_dict, strict=strict)
    except (ValueError, TypeError) as e:
        if previous is not None:
            optimizer.load_state_dict(previous)
        raise _fit_error(e)(f"{ckpt.path}: does not fit {type(module).__name__}: {e}") from e
    return ckpt
