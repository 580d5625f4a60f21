"""The training loop (Darknet's `rnn train`): streams, progress, validation, checkpoints, resume.

`train()` walks `streams` offsets through the training part of a corpus as Darknet's
train_char_rnn does (each stream carries its own recurrent state from datum to datum; after every
datum a stream is re-seated at a random offset with probability 1/64 and its state reset), shows a
progress bar on stderr, prints one line per validation and a summary line, and checkpoints:

    BACKUP/<cfg>.backup              every 100 iterations, on Ctrl-C and at the end
    BACKUP/<cfg>_<N>.weights         every `save_every` iterations
    BACKUP/<cfg>_final.weights       at the end
    <checkpoint>.state.npz           beside each: optimizer buffers, data walk, rng and recurrent
                                     state, so a resumed run continues bit for bit
    BACKUP/<cfg>.yaml                the run record: options, hyper-parameters, progress, checkpoints

An iteration is one datum (Darknet's `i`): streams * time_steps characters; an update happens
every `subdivisions` iterations, and `max_batches` counts updates from the weights' `seen`.
Every file is replaced atomically; a checkpoint's weights and state are first both written in
full beside their targets and only then renamed into place, so a full disk or a crash leaves the
previous checkpoint whole.
"""
import hashlib
import io
import json
import math
import os
import signal
import sys
import time
import warnings

import numpy as np
import yaml

from . import data as datamod
from . import vocab as vocabmod
from . import weights as weightsmod
from .errors import DarknetpyError
from .network import Network

BACKUP_EVERY = 100        # Darknet's char-RNN trainer saves <cfg>.backup every 100 iterations
VALID_EVERY = 500
SAVE_EVERY = 2000
STATE_VERSION = 1
STATE_SUFFIX = ".state.npz"


# ---- held-out validation ------------------------------------------------------------------------
class Validator:
    """A fast estimate of the held-out bits per character, run every `valid_every` iterations.

    `darknetpy valid` feeds the whole held-out text through ONE stream in order, one character at
    a time, with the state carried from the first character to the last (after the seed "\\n\\n").
    That takes minutes for a 56 KB slice; this estimate takes about a second. It splits the scored
    characters into K contiguous chunks, one per stream of a second network built from the same
    cfg (batch=K), and runs them in parallel with the state carried within each chunk, `block` steps
    per forward call. Each chunk is first warmed up, unscored, on the `warmup` characters that
    precede it (chunk 0 on the seed "\\n\\n", as `valid` does), so every character is scored exactly
    once, with the same target set as `valid`. The only differences from `valid`: a chunk's state
    has seen `warmup` characters of history instead of the whole text before it, and the sum is
    accumulated in float64 rather than Darknet's float32 — the two agree to about 0.01 bpc.
    """

    def __init__(self, cfg_path, ids, seed_ids=(), max_streams=128, warmup=128, block=64):
        ids = np.asarray(ids, dtype=np.int64)
        self.count = len(ids) - 1                        # scored characters, as `valid` counts them
        k = max(1, min(max_streams, self.count // (2 * warmup)))
        bounds = np.linspace(1, len(ids), k + 1).round().astype(np.int64)  # targets [b_j, b_j+1)
        seqs = []
        for j in range(k):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            if j == 0:
                seed = np.asarray(seed_ids, dtype=np.int64)
                x = np.concatenate([seed, ids[:hi - 1]])
                y = np.concatenate([seed[1:], ids[:hi]]) if len(seed) else ids[1:hi]
                scored = np.arange(len(x)) >= len(seed)
            else:
                start = max(0, lo - 1 - warmup)
                x, y = ids[start:hi - 1], ids[start + 1:hi]
                scored = np.arange(start + 1, hi) >= lo
            seqs.append((x, y, scored))
        length = max(len(x) for x, _, _ in seqs)
        self.x = np.zeros((length, k), np.int64)
        self.y = np.zeros((length, k), np.int64)
        self.mask = np.zeros((length, k), bool)
        for j, (x, y, scored) in enumerate(seqs):
            self.x[:len(x), j], self.y[:len(y), j], self.mask[:len(scored), j] = x, y, scored
        assert self.mask.sum() == self.count
        self.block = block
        with warnings.catch_warnings():  # the training network already reported unused cfg keys
            warnings.simplefilter("ignore")
            self.net = Network(cfg_path, batch=k, time_steps=block)

    def __call__(self, net, stop=lambda: False):
        """Bits per character of the held-out text under `net`'s current weights (None if stopped)."""
        dst = self.net.params()
        for key, value in net.params().items():
            dst[key][...] = value
        self.net.reset_state()
        total = 0.0
        for s in range(0, len(self.x), self.block):
            if stop():
                return None
            probs = self.net.forward(self.x[s:s + self.block], train=False)
            p = np.take_along_axis(probs, self.y[s:s + self.block, :, None], 2)[..., 0]
            with np.errstate(divide="ignore"):
                total -= np.log2(p[self.mask[s:s + self.block]].astype(np.float64)).sum()
        return total / self.count


# ---- files ---------------------------------------------------------------------------------------
def commit(files):
    """Replace several files together: each (path, bytes) is first written in full and fsynced
    beside its target (weights.atomic_write to `<path>.pending`), and only when all are down are they
    renamed into place, in order. A failure in the writing phase (a full disk) leaves every
    previous file untouched."""
    pending = []
    try:
        for path, data in files:
            tmp = path + ".pending"
            weightsmod.atomic_write(tmp, data)
            pending.append((tmp, path))
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(files[0][0])))


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


def _write_error(path, e, what="checkpoint"):
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
        weightsmod.atomic_write(os.path.join(path, ".darknetpy-write-test"), b"ok")
        os.unlink(os.path.join(path, ".darknetpy-write-test"))
    except OSError as e:
        raise DarknetpyError(f"cannot write in the backup directory ({e.strerror or e}); fix it or "
                             "give another with --backup", path) from None


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _plain(value):
    """numpy scalars -> Python, for yaml and json."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---- the resumable state beside each checkpoint ---------------------------------------------------
def state_bytes(net, batcher, weights_bytes, extra):
    """The .state.npz: every slot's update buffer, Adam's moments, each recurrent layer's carried
    state, and (as json) the optimizer step count, the data walk, both rngs' states and `extra`."""
    arrays = {}
    for i, (_, upd, _) in enumerate(net.slots()):
        arrays[f"upd{i}"] = upd
    opt = net.optimizer.state()
    for i, (m, v) in enumerate(zip(opt["m"], opt["v"])):
        arrays[f"m{i}"], arrays[f"v{i}"] = m, v
    for li, layer in enumerate(net.layers):
        for name in getattr(layer, "state_names", ()):
            value = getattr(layer, name, None)
            if value is not None:
                arrays[f"layer{li}.{name}"] = value
    meta = {"version": STATE_VERSION, "seen": net.seen, "weights_sha256": _sha256(weights_bytes),
            "t": opt["t"], "moments": len(opt["m"]), "slots": len(net.slots()),
            "batcher": batcher.state(), "net_rng": net.rng.bit_generator.state, **extra}
    arrays["meta"] = np.array(json.dumps(_plain(meta)))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


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
    if meta.get("version") != STATE_VERSION:
        return None, f"version {meta.get('version')}, expected {STATE_VERSION}"
    if meta.get("weights_sha256") != _sha256(weights_bytes):
        return None, "it was saved with other weights (an interrupted checkpoint?)"
    return meta, arrays


def restore_state(net, batcher, meta, arrays, path):
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
    moments = meta["moments"]
    net.optimizer.set_state({"t": meta["t"], "m": [arrays[f"m{i}"].copy() for i in range(moments)],
                             "v": [arrays[f"v{i}"].copy() for i in range(moments)]})
    net.reset_state()
    for li, layer in enumerate(net.layers):
        for name in getattr(layer, "state_names", ()):
            key = f"layer{li}.{name}"
            if key in arrays:
                if arrays[key].shape != (net.streams, layer.outputs):
                    raise DarknetpyError(f"the saved recurrent state is for {arrays[key].shape[0]} "
                                         f"streams, this run has {net.streams}; resume with the same "
                                         "batch and subdivisions", path)
                setattr(layer, name, arrays[key].astype(layer.dtype, copy=True))
    try:
        batcher.set_state(meta["batcher"])
    except DarknetpyError as e:
        raise DarknetpyError(str(e), path) from None
    net.rng.bit_generator.state = meta["net_rng"]


# ---- the run record ------------------------------------------------------------------------------
def read_record(path):
    """The options of a run record (BACKUP/<cfg>.yaml) for `--resume`."""
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
    latest = (record.get("checkpoints") or {}).get("latest")
    if not latest:
        raise DarknetpyError("the run record names no checkpoint yet; start the run again instead", path)
    if not os.path.exists(latest):
        raise DarknetpyError(f"the run record's latest checkpoint {latest} does not exist", path)
    options = dict(record["options"])
    options.update(cfg=record["cfg"], data=record["data"], weights=latest,
                   backup=os.path.dirname(os.path.abspath(path)))
    return options


def cfg_base(cfg_path):
    """Checkpoint name stem: the cfg's file name without its last extension."""
    name = os.path.basename(str(cfg_path))
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


# ---- the loop ------------------------------------------------------------------------------------
class _Interrupt:
    """First Ctrl-C: finish the iteration, save, exit 130. A second one interrupts at once."""

    def __init__(self):
        self.flag = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class _LogLines:
    """A progress-bar stream for a log file (stderr not a terminal): every refresh becomes its own
    line instead of a carriage-return overwrite, and blank clears are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self):
        self.stream.flush()


def _stderr_line(text):
    print(text, file=sys.stderr, flush=True)


def _refuse_to_replace(paths, cfg):
    """A new run writes <cfg>.backup and the run record: refuse when an earlier run's are there."""
    if not os.path.exists(paths["backup"]):
        return
    where = ""
    try:
        with open(paths["record"], encoding="utf-8") as f:
            where = f" (iteration {int(yaml.safe_load(f)['progress']['iteration'])})"
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        pass
    raise DarknetpyError(f"an earlier run of {cfg} is kept here{where}; continue it with "
                         f"`darknetpy train --resume {paths['record']}`, start from its weights with "
                         f"--weights, or start over with --backup DIR or --overwrite", paths["backup"])


def train(cfg, data, weights=None, clear=False, tokenized=False, backup="backup", max_batches=None,
          srand=None, valid_frac=None, valid_every=VALID_EVERY, save_every=SAVE_EVERY, progress=True,
          resumed_from=None, overwrite=False, vocab=None, max_vocab=None, valid_full=False):
    """Train CFG on DATA; returns a summary dict (status 'finished' or 'interrupted').

    A run that does not continue from `backup`'s own checkpoints refuses to replace an earlier
    run's there unless `overwrite`. Raises DarknetpyError for bad input, a diverged loss (nothing
    poisoned is saved) or a failed checkpoint write (the previous checkpoint stays whole).
    """
    t0 = time.time()
    if srand is None:
        srand = int(np.random.SeedSequence().entropy % 2**31)
    net = Network(cfg, seed=srand)
    if net.loss_layer is None:
        raise DarknetpyError("the network has no [softmax] or [cost] layer to train against", cfg)
    rows = net.streams * net.time_steps
    if max_batches is None:
        max_batches = net.hp["max_batches"]
    if max_batches <= 0:
        raise DarknetpyError("no max_batches: set max_batches=N in [net] or pass --max-batches N", cfg)

    ids, vocabulary = vocabmod.prepare_corpus(cfg, net, data, vocab, tokenized, weights, max_vocab)
    if valid_frac is None:
        valid_frac = datamod.default_valid_frac(len(ids), net.time_steps)
    train_ids, valid_ids = datamod.split_corpus(ids, valid_frac, data)
    batcher = datamod.StreamBatcher(train_ids, net.streams, net.time_steps,
                                    np.random.default_rng([srand, 1]), data)

    corpus_sha = datamod.sha256(ids, len(train_ids), as_int32=tokenized)  # in chunks: no copy of the corpus
    avg = None
    if weights is not None:
        net.load_weights(weights)
        if clear:
            net.seen = 0
        else:
            with open(weights, "rb") as f:
                meta, arrays = read_state(weights + STATE_SUFFIX, f.read())
            if meta is not None:
                restore_state(net, batcher, meta, arrays, weights + STATE_SUFFIX)
                avg = meta.get("avg_loss")
                if meta.get("corpus_sha256") not in (None, corpus_sha):
                    _stderr_line(f"warning: {data}: the training text differs from the one "
                                 f"{weights} was trained on; continuing on this one")
            elif arrays != "missing":
                _stderr_line(f"warning: {weights}{STATE_SUFFIX}: ignored, {arrays}; "
                             "the optimizer starts afresh")
    base = os.path.join(backup, cfg_base(cfg))
    paths = {"backup": base + ".backup", "final": base + "_final.weights", "record": base + ".yaml"}
    continuing = resumed_from is not None or (  # from one of this run's own checkpoints
        weights is not None and os.path.dirname(os.path.abspath(weights)) == os.path.abspath(backup))
    if not (continuing or overwrite):
        _refuse_to_replace(paths, cfg)
    prepare_backup_dir(backup)  # last of the checks, all before any training
    if vocabulary is not None:
        vocabulary.save(base + ".vocab")
    elif not continuing and os.path.exists(base + ".vocab"):
        os.unlink(base + ".vocab")  # an earlier run's: tokenized ids are decoded with --tokens

    seed_ids = vocabmod.seed_ids(vocabulary, net)
    # periodic and end-of-run estimates score a bounded slice: their cost does not grow with the corpus
    validator = Validator(cfg, datamod.read_ids(valid_ids, 0, datamod.VALID_SLICE), seed_ids) if valid_ids is not None else None
    hp = dict(net.hp)
    opt = net.optimizer
    record = {
        "cfg": os.path.abspath(cfg), "data": os.path.abspath(data) if data != "-" else data,
        "backup": os.path.abspath(backup), "status": "running",
        "options": {"tokenized": bool(tokenized), "vocab": vocabulary.mode if vocabulary else None,
                    "max_vocab": max_vocab, "valid_full": bool(valid_full), "max_batches": int(max_batches),
                    "valid_frac": float(valid_frac), "valid_every": int(valid_every),
                    "save_every": int(save_every), "srand": int(srand)},
        "started_from": {"weights": os.path.abspath(weights) if weights else None,
                         "clear": bool(clear), "resumed_from": resumed_from},
        "hyperparameters": {
            "inputs": net.inputs, "outputs": net.outputs, "batch": net.batch,
            "subdivisions": net.subdivisions, "streams": net.streams, "time_steps": net.time_steps,
            "chars_per_update": net.batch * net.time_steps, "max_batches": int(max_batches),
            "optimizer": "adam" if opt.adam else "sgd",
            **({"B1": opt.B1, "B2": opt.B2, "eps": opt.eps} if opt.adam else {"momentum": opt.momentum}),
            "decay": opt.decay, "clip": opt.clip, **hp,
            "parameters": int(sum(v.size for v in net.params().values())),
            "train_chars": int(len(train_ids)), "valid_chars": int(len(valid_ids)) if valid_ids is not None else 0,
        },
        "corpus": vocabmod.record(vocabulary, data, base + ".vocab"),
        "progress": {}, "checkpoints": {"latest": None, "backup": None, "final": None, "numbered": []},
    }
    if weights is not None and resumed_from is None and os.path.exists(paths["record"]):
        try:  # continuing a run with --weights: keep its list of numbered checkpoints
            with open(paths["record"], encoding="utf-8") as f:
                old = yaml.safe_load(f) or {}
            record["checkpoints"]["numbered"] = list((old.get("checkpoints") or {}).get("numbered") or [])
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    if resumed_from is not None:
        with open(resumed_from, encoding="utf-8") as f:
            old = yaml.safe_load(f)
        record["checkpoints"]["numbered"] = list(old["checkpoints"].get("numbered") or [])

    iteration = net.seen // rows
    total = max_batches * net.subdivisions
    state = {"loss": None, "avg": avg, "valid": None, "valid_iteration": None,
             "saved": iteration if weights is not None else None,  # the last good checkpoint
             "saved_path": os.path.abspath(weights) if weights is not None else None}

    def progress_fields():
        return {"seen": net.seen, "iteration": iteration, "updates": net.batch_num,
                "epoch": round(net.seen / len(train_ids), 4), "seconds": round(time.time() - t0, 1),
                "train_loss": state["loss"], "avg_loss": state["avg"],
                "valid_bpc": state["valid"], "valid_iteration": state["valid_iteration"]}

    def check_finite(where):
        if not all(np.isfinite(v).all() for v in net.params().values()):
            raise diverged(f"non-finite weights {where}")

    def diverged(what):
        last = (f"the last good checkpoint is {state['saved_path']} (iteration {state['saved']})"
                if state["saved_path"] else "no checkpoint was written in this run")
        return DarknetpyError(f"{what} at iteration {iteration}: training diverged and stopped "
                              f"without saving; {last}; lower learning_rate or set clip in [net]", cfg)

    def checkpoint(path, kind):
        check_finite("before checkpoint")
        wbytes = weightsmod.to_bytes(net)
        sbytes = state_bytes(net, batcher, wbytes, {"iteration": iteration, "avg_loss": state["avg"],
                                                    "corpus_sha256": corpus_sha})
        try:
            commit([(path + STATE_SUFFIX, sbytes), (path, wbytes)])
        except OSError as e:
            raise _write_error(path, e) from None
        state["saved"], state["saved_path"] = iteration, os.path.abspath(path)
        cps = record["checkpoints"]
        cps["latest"] = os.path.abspath(path)
        if kind == "numbered":
            if cps["latest"] not in cps["numbered"]:
                cps["numbered"].append(cps["latest"])
        else:
            cps[kind] = cps["latest"]
        write_record()

    def write_record(status="running"):
        record["status"] = status
        record["progress"] = progress_fields()
        text = yaml.safe_dump(_plain(record), sort_keys=False, default_flow_style=False)
        try:
            weightsmod.atomic_write(paths["record"], text.encode())
        except OSError as e:
            raise _write_error(paths["record"], e, "run record") from None

    bar = None
    if progress:
        from tqdm import tqdm
        tty = sys.stderr.isatty()
        out = sys.stderr if tty else _LogLines(sys.stderr)
        bar = tqdm(total=total, initial=min(iteration, total), file=out, unit="it",
                   dynamic_ncols=True, mininterval=0.5 if tty else 30, smoothing=0.05,
                   bar_format="iteration {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def say(line):
        if bar is not None and sys.stderr.isatty():
            bar.write(line, file=sys.stderr)
        else:
            _stderr_line(line)

    def validate(stop):
        if validator is None:
            return
        v0 = time.time()
        bpc = validator(net, stop)
        if bpc is None:
            return
        state["valid"], state["valid_iteration"] = float(bpc), iteration
        loss = f"{state['loss']:.4f}" if state["loss"] is not None else "-"
        avg_ = f"{state['avg']:.4f}" if state["avg"] is not None else "-"
        say(f"valid: iteration {iteration}  {time.time() - t0:.1f} s  loss {loss}  avg {avg_}  "
            f"valid {bpc:.4f} bpc ({validator.count} chars, {time.time() - v0:.1f} s)")

    status = "finished"
    try:  # overflow in a diverging run is reported as a non-finite loss, not as numpy warnings
        with _Interrupt() as interrupt, np.errstate(all="ignore"):
            while net.batch_num < max_batches:
                if interrupt.flag:
                    status = "interrupted"
                    break
                x, y = batcher.next_batch()
                cost = float(net.train_step(x, y))
                iteration = net.seen // rows
                loss = cost / rows
                if not math.isfinite(loss):
                    raise diverged(f"non-finite loss ({loss})")
                state["loss"] = loss
                state["avg"] = loss if state["avg"] is None else 0.9 * state["avg"] + 0.1 * loss
                for s in batcher.reseat():
                    net.reset_state(int(s))
                if bar is not None:
                    rate = net.last_rate
                    if rate is None and net.hp["policy"] != "random":  # "random" would draw from the rng
                        rate = net.learning_rate()
                    rate = "-" if rate is None else f"{rate:.3g}"
                    bar.set_postfix_str(f"loss {loss:.4f}  avg {state['avg']:.4f}  rate {rate}  "
                                        f"epoch {net.seen / len(train_ids):.2f}", refresh=False)
                    bar.update(1)
                if valid_every > 0 and iteration % valid_every == 0:
                    validate(lambda: interrupt.flag)
                if iteration % BACKUP_EVERY == 0:
                    checkpoint(paths["backup"], "backup")
                if save_every > 0 and iteration % save_every == 0:
                    checkpoint(f"{base}_{iteration}.weights", "numbered")
            if status == "interrupted":
                if state["saved"] != iteration or record["checkpoints"]["latest"] != os.path.abspath(paths["backup"]):
                    checkpoint(paths["backup"], "backup")
                write_record("interrupted")
            else:
                if valid_full and valid_ids is not None and len(valid_ids) > datamod.VALID_SLICE:
                    validator = Validator(cfg, valid_ids, seed_ids)
                    state["valid_iteration"] = None
                if state["valid_iteration"] != iteration:
                    validate(lambda: interrupt.flag)
                checkpoint(paths["backup"], "backup")
                checkpoint(paths["final"], "final")
                write_record("finished")
    finally:
        if bar is not None:
            bar.close()
    summary = progress_fields()
    summary.update(status=status, checkpoint=state["saved_path"], max_batches=max_batches,
                   record=os.path.abspath(paths["record"]))
    return summary


def format_summary(s):
    """The one summary line printed at the end of a run."""
    avg = f"{s['avg_loss']:.4f}" if s["avg_loss"] is not None else "-"
    valid = f"{s['valid_bpc']:.4f} bpc" if s["valid_bpc"] is not None else "-"
    return (f"{s['status']}: iteration {s['iteration']}, update {s['updates']} of max_batches "
            f"{s['max_batches']}, seen {s['seen']}, epoch {s['epoch']:.2f}, {s['seconds']:.0f} s, "
            f"avg loss {avg}, valid {valid}; saved {s['checkpoint']}")
