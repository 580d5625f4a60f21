"""What makes a checkpoint: the atomic commit of several files, the `.state.npz` beside each
weights file, and the run record `BACKUP/<cfg>.yaml`; and reading one back: `find_vocab`, the
vocabulary of the run that made a weights file, and `load_network` (darknetpy.load_network).

A checkpoint is a pair, `<path>` (Darknet .weights) and `<path>.state.npz`, committed together:
both are first written in full beside their targets and only then renamed into place, so a full
disk or a crash leaves the previous pair whole. The trainer commits them off its own thread
(`Writer`), one checkpoint after the other.

The run record names the files of its run (checkpoints, metrics log, vocabulary, the copy of the
cfg) relative to its own folder, so a copied, moved or renamed folder is a run of its own; only
the corpus is named by its absolute path. Records that name absolute paths (before this) still
resume where their files are. One training at a time writes into a folder: it holds
`FolderLock` (an OS lock on BACKUP/.darknetpy.lock) for its whole life.

The .state.npz (version 2) holds everything besides the weights that a resumed run needs to
continue bit for bit:
    upd{i}                  slot i's accumulated update (momentum) buffer, in Network.slots() order
    optimizer.{name}.{i}    slot i's entry of each per-slot buffer the optimizer declares
                            (Adam: m, v; SGD: none)
    layer{l}.{name}         each recurrent layer's carried state, (streams, outputs)
    ema.{i}                 with [net] ema_alpha: the average of parameter array i
                            (optim.parameter_arrays order), and meta ema {alpha, arrays}
    trained.{i}             where the weights file holds that average (best, final): the trained
                            parameter arrays, which a resume goes on from; meta trained: their count
    meta                    json: version, seen, weights_sha256, slots, optimizer {name, scalars
                            (t), buffers {name: count}}, batcher (data walk), net_rng, and what the
                            trainer adds (iteration, avg_loss, corpus_sha256, vocab: the run's
                            vocabulary, see vocab_entry, ...)
Version 1 (before optimizers were classes) stored Adam's moments as m{i}, v{i} and the step
count as meta t, moments; it is still read.
"""
import atexit
import hashlib
import io
import json
import os
import re
import shlex
import socket
import sys
import threading

import numpy as np
import yaml

from . import atomic, optim
from .errors import DarknetpyError
from .network import Network
from .vocab import MODES, Vocab, check_fits

STATE_VERSION = 2
STATE_SUFFIX = ".state.npz"


# ---- files ---------------------------------------------------------------------------------------
def commit(files):
    """Replace several files together: each (path, bytes) is first written in full and fsynced
    beside its target (atomic.write to `<path>.pending`), and only when all are down are they
    renamed into place, in order. A failure in the writing phase (a full disk) leaves every
    previous file untouched."""
    pending = []
    try:
        for path, data in files:
            tmp = path + ".pending"
            atomic.write(tmp, data)
            pending.append((tmp, path))
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(files[0][0])))


class Writer:
    """Checkpoint writes off the training thread: each job (a function that commits files) runs in
    a thread of its own while training goes on, one job at a time and in the order submitted (a
    job's thread first waits for the one before it; none runs after a failed one), so the files
    still land as `commit` orders them and a run's last good checkpoint stays the last one written
    whole. A job's error is raised in the training thread by `check` once the jobs have ended, or
    by `wait`. `background=False` runs each job at once, in the caller (several MPI ranks, whose
    rank 0 shares a write's error with the others as it happens)."""

    def __init__(self, background=True):
        self.background = background
        self.thread, self.error = None, None

    def submit(self, job):
        """Run `job` after every earlier one, without waiting for them (the best checkpoint and the
        backup of one iteration are written one after the other while training goes on)."""
        self.check()
        if not self.background:
            job()
            return
        before = self.thread

        def run():
            if before is not None:
                before.join()
            if self.error is not None:  # an earlier write failed: nothing after it
                return
            try:
                job()
            except BaseException as e:  # noqa: BLE001 — handed to the training thread
                self.error = e
        # not a daemon: an exit (a second Ctrl-C) waits for the files to be whole
        self.thread = threading.Thread(target=run, name="darknetpy-checkpoint")
        self.thread.start()

    def check(self):
        """Raise the error of a job that has ended (without waiting for one that runs)."""
        if self.thread is not None and not self.thread.is_alive():
            self.wait()

    def wait(self, raise_error=True):
        """Block until every job is done; raise the error (or drop it: the caller has its own)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None and raise_error:
            raise error


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path, e, what="checkpoint"):
    """The DarknetpyError for a failed write of `what` (an OSError `e`)."""
    reason = e.strerror or str(e)
    return DarknetpyError(f"cannot write the {what} ({reason}); training stopped, the previous "
                          f"{what} is intact", path)


def prepare_backup_dir(path):
    """Create BACKUP if missing and prove it is a writable directory before any training."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise DarknetpyError("the backup path exists and is not a directory; give a directory with "
                             "--backup", path) from None
    except OSError as e:
        raise DarknetpyError(f"cannot create the backup directory ({e.strerror or e}); give another "
                             "with --backup", path) from None
    if not os.path.isdir(path):
        raise DarknetpyError("the backup path is not a directory; give a directory with --backup", path)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DarknetpyError("the backup directory is not readable and writable; fix its permissions "
                             "or give another with --backup", path)
    try:  # the real test (root passes os.access; read-only mounts and full disks do not)
        atomic.write(os.path.join(path, ".darknetpy-write-test"), b"ok")
        os.unlink(os.path.join(path, ".darknetpy-write-test"))
    except OSError as e:
        raise DarknetpyError(f"cannot write in the backup directory ({e.strerror or e}); fix it or "
                             "give another with --backup", path) from None


def cfg_base(cfg_path):
    """Checkpoint name stem: the cfg's file name without its last extension."""
    name = os.path.basename(str(cfg_path))
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def plain(value):
    """numpy scalars -> Python, for yaml and json."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- the resumable state beside each checkpoint ---------------------------------------------------
def state_bytes(net, batcher, weights_bytes, extra, ema=None, trained=None):
    """The .state.npz (version 2, see the module docstring) of `net` and `batcher` now; `extra`
    (json-able) goes into meta. `ema`: the run's optim.EMA; `trained`: the trained parameter
    arrays, when the weights hold the EMA's average instead."""
    return npz_bytes(state_arrays(net, batcher, weights_bytes, extra, ema, trained))


def npz_bytes(arrays):
    """The bytes of an .npz of `arrays` (name: array)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def state_arrays(net, batcher, weights_bytes, extra, ema=None, trained=None, copy=False):
    """What state_bytes writes, as arrays (meta as a json string): views of the run's own buffers,
    or with `copy` a snapshot that the run may go on changing beside (its .npz made later, in
    the checkpoint writer's thread)."""
    arrays = {f"upd{i}": upd for i, (_, upd, _) in enumerate(net.slots())}
    opt = net.optimizer
    scalars, buffers = {}, {}
    for name, value in opt.state().items():
        if isinstance(value, list):
            buffers[name] = len(value)
            arrays.update({f"optimizer.{name}.{i}": a for i, a in enumerate(value)})
        else:
            scalars[name] = value
    arrays.update(net.states)
    meta = {"version": STATE_VERSION, "seen": net.seen, "weights_sha256": sha256(weights_bytes),
            "slots": len(net.slots()), "optimizer": {"name": opt.name, "scalars": scalars, "buffers": buffers},
            "batcher": batcher.state(), "net_rng": net.rng.bit_generator.state, **extra}
    if ema is not None and ema.shadow:  # (no average before the first update)
        arrays.update({f"ema.{i}": s for i, s in enumerate(ema.shadow)})
        meta["ema"] = {"alpha": ema.alpha, "arrays": len(ema.shadow)}
    if trained is not None:
        arrays.update({f"trained.{i}": a for i, a in enumerate(trained)})
        meta["trained"] = len(trained)
    arrays["meta"] = np.array(json.dumps(plain(meta)))
    return {name: a.copy() for name, a in arrays.items()} if copy else arrays


def read_state(path, weights_bytes):
    """(meta, arrays) of a .state.npz, or (None, reason) if it is missing or not for these weights."""
    if not os.path.exists(path):
        return None, "missing"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as e:  # noqa: BLE001 — any unreadable state means: start the optimizer afresh
        return None, f"unreadable ({e})"
    if meta.get("version") not in (1, STATE_VERSION):
        return None, f"version {meta.get('version')}, expected {STATE_VERSION} or 1"
    if meta.get("weights_sha256") != sha256(weights_bytes):
        return None, "it was saved with other weights (an interrupted checkpoint?)"
    return meta, arrays


def optimizer_state(meta, arrays):
    """The optimizer's state() as saved, from a version 1 or 2 file."""
    if meta["version"] == 1:  # Adam's moments m{i}, v{i} and meta t, moments
        n = meta["moments"]
        return {"t": meta["t"], "m": [arrays[f"m{i}"].copy() for i in range(n)],
                "v": [arrays[f"v{i}"].copy() for i in range(n)]}
    saved = meta["optimizer"]
    return {**saved["scalars"], **{name: [arrays[f"optimizer.{name}.{i}"].copy() for i in range(n)]
                                   for name, n in saved["buffers"].items()}}


def saved_arrays(net, arrays, prefix, count, path):
    """Parameter-shaped arrays `prefix`.0 .. `prefix`.count-1 of a state (the EMA's average, the
    trained weights), checked against the network's parameter arrays."""
    mine = optim.parameter_arrays(net)
    saved = [arrays[f"{prefix}.{i}"] for i in range(count)]
    if [a.shape for a in saved] != [a.shape for a in mine]:
        raise DarknetpyError(f"the state's {prefix} arrays are not the cfg's parameter arrays; resume with "
                             "the cfg it was saved with", path)
    return saved


def restore_state(net, batcher, meta, arrays, path):
    """Put a read_state() result into `net` and `batcher`; refuses a state of another cfg. Where the
    weights file held the EMA's average, the trained weights saved beside it replace it: training
    goes on from them."""
    if meta.get("trained"):
        for a, saved in zip(optim.parameter_arrays(net), saved_arrays(net, arrays, "trained", meta["trained"], path)):
            a[...] = saved
        net.refresh()
    slots = net.slots()
    if meta["slots"] != len(slots):
        raise DarknetpyError(f"the optimizer state has {meta['slots']} parameter arrays, the cfg "
                             f"{len(slots)}; resume with the cfg it was saved with", path)
    for i, (_, upd, _) in enumerate(slots):
        saved = arrays[f"upd{i}"]
        if saved.shape != upd.shape:
            raise DarknetpyError(f"the optimizer state's array {i} is {saved.shape}, the cfg's "
                                 f"{upd.shape}; resume with the cfg it was saved with", path)
        upd[...] = saved
    net.optimizer.load_state(optimizer_state(meta, arrays))
    net.reset_state()
    for li, layer in enumerate(net.layers):
        for name in getattr(layer, "state_names", ()):
            key = f"layer{li}.{name}"
            if key in arrays:
                if arrays[key].shape != (net.streams, layer.outputs):
                    raise DarknetpyError(f"the saved recurrent state is for {arrays[key].shape[0]} "
                                         f"streams, this run has {net.streams}; resume with the same "
                                         "batch and subdivisions", path)
                net.states[key] = arrays[key].astype(layer.dtype, copy=True)
    try:
        batcher.set_state(meta["batcher"])
    except DarknetpyError as e:
        raise DarknetpyError(str(e), path) from None
    net.rng.bit_generator.state = meta["net_rng"]


# ---- the run record ------------------------------------------------------------------------------
def relative(path, folder):
    """`path` as the record in `folder` names it: relative when it lies inside the folder (the
    run's own files travel with it), else absolute."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    inside = os.path.commonpath([path, folder]) == folder
    return os.path.relpath(path, folder) if inside else path


def resolve(name, folder):
    """A path named in a record in `folder`: relative names are in that folder; an absolute one
    (a record written before names were relative, or a file outside the folder) stays as it is."""
    return name if name is None or os.path.isabs(name) else os.path.join(folder, name)


def quote(path):
    """A path as it can be pasted into a shell."""
    return shlex.quote(str(path))


def read_record(path, need_latest=True):
    """The options of a run record (BACKUP/<cfg>.yaml) for `--resume`, its paths resolved against
    the record's folder. `need_latest`: refuse, naming the way out, when the latest checkpoint is
    missing (False when --weights names another one)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = yaml.safe_load(f)
    except FileNotFoundError:
        raise DarknetpyError("no such run record; give the BACKUP/<cfg>.yaml a run wrote", path) from None
    except OSError as e:
        raise DarknetpyError(f"cannot read the run record ({e.strerror or e})", path) from None
    except yaml.YAMLError as e:
        raise DarknetpyError(f"not a run record: {str(e).splitlines()[0]}", path) from None
    if not isinstance(record, dict) or not {"cfg", "data", "options", "checkpoints"} <= set(record):
        raise DarknetpyError("not a darknetpy run record (needs cfg, data, options, checkpoints)", path)
    folder = os.path.dirname(os.path.abspath(path))
    cps = record.get("checkpoints") or {}
    latest = resolve(cps.get("latest"), folder)
    if need_latest and not latest:
        raise DarknetpyError("the run record names no checkpoint yet; start the run again instead", path)
    if need_latest and not os.path.exists(latest):
        others = [p for p in checkpoint_files(cps, folder) if p != latest]
        other = quote(max(others, key=os.path.getmtime)) if others else "CHECKPOINT"  # the newest
        raise DarknetpyError(f"the run record's latest checkpoint {latest} does not exist; continue from "
                             f"another with `darknetpy train --resume {quote(path)} --weights {other}`"
                             + (f" (this folder has {', '.join(map(os.path.basename, others))})" if others else ""), path)
    cfg = resolve(record["cfg"], folder)
    if not os.path.exists(cfg) and os.path.exists(record.get("cfg_source") or ""):  # the copy deleted
        cfg = record["cfg_source"]
    options = dict(record["options"])
    options.update(cfg=cfg, data=record["data"], weights=latest, backup=folder, previous_end=options.get("max_batches"))
    return options


def checkpoint_files(cps, folder):
    """The checkpoints a record names that exist: where it says, or (a moved folder of a record
    with absolute paths) under the same name in its folder."""
    names = [cps.get(k) for k in ("latest", "backup", "final", "best")] + list(cps.get("numbered") or [])
    found = []
    for name in filter(None, names):
        for path in (resolve(name, folder), os.path.join(folder, os.path.basename(name))):
            if os.path.exists(path) and path not in found:
                found.append(path)
                break
    return found


def earlier_record(path):
    """The content of an earlier run's record at `path`, or {} if there is none readable."""
    try:
        with open(path, encoding="utf-8") as f:
            record = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}


def refuse_to_replace(paths, cfg):
    """A new run writes <cfg>.backup and the run record: refuse when an earlier run's are there."""
    if not os.path.exists(paths["backup"]):
        return
    where = ""
    try:
        where = f" (iteration {int(earlier_record(paths['record'])['progress']['iteration'])})"
    except (KeyError, TypeError, ValueError):
        pass
    raise DarknetpyError(f"an earlier run of {cfg} is kept here{where}; continue it with "
                         f"`darknetpy train --resume {quote(paths['record'])}`, start from its weights with "
                         f"--weights, or start over with --backup DIR or --overwrite", paths["backup"])


class FolderLock:
    """One training at a time in a backup folder: an OS lock (flock) on BACKUP/.darknetpy.lock,
    held from the start of a run to its end and released by the OS when the process dies (a
    SIGKILL leaves no stale lock, only the file, which the next run takes over). The file holds
    the holder's pid, host and command line, for the refusal of a second run; a run that ends
    removes it, and so does the process's exit, for a Ctrl-C that lands between the trainer's
    set-up and its run's cleanups. Reading commands never take it. Where flock does not exist (Windows), nothing is
    locked."""
    NAME = ".darknetpy.lock"

    def __init__(self, folder):
        self.path, self.fd = os.path.join(folder, self.NAME), None
        try:
            import fcntl
        except ImportError:
            return
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DarknetpyError(f"cannot create the lock file ({e.strerror or e}); fix the folder's "
                                     "permissions or give another with --backup", self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "a process that is starting"
                os.close(fd)
                raise DarknetpyError(f"a training is still writing into this folder ({holder}); wait for it to "
                                     "end or stop it, or train into another folder with --backup DIR", folder) from None
            if _same_file(fd, self.path):
                self.fd = fd
            else:  # the holder removed the file as we opened it: lock the new one
                os.close(fd)
        atexit.register(self.release)
        os.ftruncate(fd, 0)
        argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: darknetpy {argv}\n".encode())

    def release(self):
        """Remove the file, then let go of the lock (in this order, so a run that opens the file in
        between finds it gone and takes a new one)."""
        if self.fd is not None:
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
            atexit.unregister(self.release)


def _same_file(fd, path):
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Record:
    """The run record BACKUP/<cfg>.yaml: options, hyper-parameters, progress, checkpoints (named
    relative to the record's folder), rewritten atomically after every checkpoint and at the end."""

    def __init__(self, path, content):
        self.path, self.content = path, content
        self.folder = os.path.dirname(os.path.abspath(path))

    def name(self, path):
        """How the record names `path`: relative to its folder when inside it."""
        return relative(path, self.folder)

    def add_checkpoint(self, path, kind):
        """Note checkpoint `path` as the latest and as `kind` ('backup', 'final', 'best' or 'numbered')."""
        cps = self.content["checkpoints"]
        cps["latest"] = self.name(path)
        if kind == "numbered":
            if cps["latest"] not in cps["numbered"]:
                cps["numbered"].append(cps["latest"])
        else:
            cps[kind] = cps["latest"]

    def write(self, status, progress):
        self.put(self.text(status, progress))

    def text(self, status, progress):
        """The record's yaml with this status and progress (what `put` writes)."""
        self.content["status"] = status
        self.content["progress"] = progress
        return yaml.safe_dump(plain(self.content), sort_keys=False, default_flow_style=False)

    def put(self, text):
        try:
            atomic.write(self.path, text.encode())
        except OSError as e:
            raise write_error(self.path, e, "run record") from None


# ---- the vocabulary travels with the weights ----------------------------------------------------
_CHECKPOINT = re.compile(r"(.+?)(?:\.backup|_final\.weights|_best\.weights|_\d+\.weights)")


def vocab_entry(vocab):
    """A checkpoint's .state.npz meta `vocab`: mode, size, the sha256 and the text of its .vocab
    file (small beside the weights), so the weights and their state alone carry the vocabulary.
    None for --tokenized ids."""
    if vocab is None:
        return None
    text = vocab.to_text()
    return {"mode": vocab.mode, "size": vocab.size, "sha256": sha256(text.encode("utf-8")), "text": text}


def _run_stem(weights_path):
    """The cfg stem of the run a checkpoint's file name comes from, or None for another name."""
    stem = _CHECKPOINT.fullmatch(os.path.basename(weights_path))
    return stem.group(1) if stem else None


def _vocab_named(weights_path):
    """(entry, where): what the weights' own .state.npz, else their run record, says of the
    vocabulary ({mode, size[, sha256, text]}, or None: nothing said), and that file's name."""
    state = weights_path + STATE_SUFFIX
    try:
        with np.load(state, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except Exception:  # noqa: BLE001 — missing or unreadable: the weights may still be found by name
        meta = {}
    if "vocab" in meta:
        return meta["vocab"] or {"mode": "tokenized"}, state
    stem = _run_stem(weights_path)
    if stem:
        path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), stem + ".yaml")
        entry = (earlier_record(path).get("corpus") or {}).get("vocab")
        if isinstance(entry, dict) and entry.get("mode") in MODES:
            return {"mode": entry["mode"], "size": entry.get("size")}, path
    return None, None


def _vocab_mismatch(vocab, entry, where):
    """Why a vocabulary file is not the one `entry` (from `where`) names, or None if it is."""
    if entry is None or entry["mode"] == "tokenized":  # Darknet's ids: a tokenize .vocab may name them
        return None
    if (vocab.mode, vocab.size) != (entry["mode"], entry.get("size", vocab.size)) or \
            entry.get("sha256") not in (None, sha256(vocab.to_text().encode("utf-8"))):
        return (f"is a {vocab.mode} vocabulary of {vocab.size} tokens, not the {entry['mode']} one of "
                f"{entry.get('size')} tokens {where} names")
    return None


def find_vocab(cfg_path, weights_path, given, net, building=False):
    """The vocabulary of the run that made `weights_path`: --vocab FILE (`given`), else the one in
    the weights' own .state.npz, else `<stem>.vocab` beside the weights, the stem from the weights'
    name (<stem>.backup, <stem>_final.weights, <stem>_best.weights, <stem>_<N>.weights) and then
    the cfg's; a file must match what the state or run record beside the weights names, and fit
    the network. None: bytes (Darknet's). When the model needs a vocabulary (its state or run
    record names chars or words, or it has more than 256 inputs or outputs; not when `building`
    one for train) and none is found, one error line says where it looked; never bytes then."""
    weights_path = os.fspath(weights_path)
    entry, where = _vocab_named(weights_path)
    if given:
        vocab = Vocab.load(given)
        why = _vocab_mismatch(vocab, entry, where)
        if why:
            raise DarknetpyError(f"{why}, which the weights were trained with; drop --vocab", given)
        check_fits(vocab, net, cfg_path)
        return vocab
    if entry and entry.get("text"):
        vocab = Vocab.from_text(entry["text"], where)
        check_fits(vocab, net, cfg_path)
        return vocab
    looked = [f"no --vocab FILE, no vocabulary in {weights_path + STATE_SUFFIX}"]
    folder = os.path.dirname(os.path.abspath(weights_path))
    for name in dict.fromkeys([stem for stem in (_run_stem(weights_path), cfg_base(cfg_path)) if stem]):
        path = os.path.join(folder, name + ".vocab")
        if not os.path.exists(path):
            looked.append(f"no {path}")
            continue
        vocab = Vocab.load(path)
        why = _vocab_mismatch(vocab, entry, where)
        if why is None:
            check_fits(vocab, net, cfg_path)
            return vocab
        looked.append(f"{path} {why}")
    if entry and entry["mode"] in ("chars", "words", "tokenized"):
        need = (f"these weights need their {entry['mode']} vocabulary" if entry["mode"] != "tokenized" else
                "these weights were trained on --tokenized ids (generate reads --tokens FILE) and need "
                "a vocabulary")
    elif max(net.inputs, net.outputs) > 256 and not building:
        need = (f"a network of {net.inputs} inputs and {net.outputs} outputs is not a byte model and "
                "needs its vocabulary")
    else:
        return None
    raise DarknetpyError(f"{need}, and none was found ({'; '.join(looked)}); put the run's .vocab "
                         "beside the weights or give it with --vocab FILE", weights_path)


# ---- a network from its cfg and a checkpoint -------------------------------------------------------
def load_network(cfg, weights_path=None, batch=None, time_steps=None):
    """Build the network a .cfg describes and, if given, load a Darknet .weights file into it.

    `batch` overrides the streams run at once (subdivisions become 1), `time_steps` the steps per datum.
    Unused cfg keys are reported as `cfg.CfgWarning` warnings, as Darknet prints them. The
    vocabulary of the run that made the weights (find_vocab: their .state.npz, else the run's
    .vocab beside them) becomes `net.vocab`; a model that needs one and has none is refused.
    """
    net = Network(cfg, batch=batch, time_steps=time_steps)
    if weights_path is not None:
        net.load_weights(weights_path)
        net.vocab = find_vocab(cfg, weights_path, None, net)
    return net
