"""The training loop (Darknet's `rnn train`): streams, progress, validation, checkpoints, resume.

`Trainer` walks `streams` offsets through the training part of a corpus as Darknet's
train_char_rnn does (each stream carries its own recurrent state from datum to datum; after every
datum a stream is re-seated at a random offset with probability 1/64 and its state reset), shows a
progress bar on stderr, prints one line per validation and a summary line, and checkpoints
(darknetpy/checkpoint.py holds the file formats):

    BACKUP/<cfg>.backup              every 100 iterations, on Ctrl-C and at the end
    BACKUP/<cfg>_<N>.weights         every `save_every` iterations
    BACKUP/<cfg>_final.weights       at the end
                                     (with [net] ema_alpha, it and _best.weights hold the average of
                                     the weights, optim.EMA, which validations score; the others the
                                     trained weights)
    <checkpoint>.state.npz           beside each: optimizer buffers, data walk, rng and recurrent
                                     state, so a resumed run continues bit for bit
    BACKUP/<cfg>.yaml                the run record: options, hyper-parameters, progress, checkpoints
                                     (named relative to BACKUP: the folder can be copied or moved)
    BACKUP/<cfg>.cfg                 a copy of the cfg, which --resume reads
    BACKUP/.darknetpy.lock           held while the run lives: one training per folder

An iteration is one datum (Darknet's `i`): streams * time_steps characters; an update happens
every `subdivisions` iterations, and `max_batches` counts updates from the weights' `seen`.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time

import numpy as np

from . import atomic
from . import checkpoint as ckpt
from . import data as datamod
from . import evaluate
from . import generation
from . import vocab as vocabmod
from . import metrics as metricsmod
from . import optim
from . import parallel
from . import weights as weightsmod
from .checkpoint import STATE_SUFFIX
from .errors import DarknetpyError
from .network import Network
from .options import GenerationOptions, TrainOptions, parse_duration

BACKUP_EVERY = 100        # Darknet's char-RNN trainer saves <cfg>.backup every 100 iterations
VALID_EVERY = 500         # iterations between validations, when --valid-every is not given; a
VALID_TIMES = 10          # --time-budget run's are also at least a tenth of the budget apart


# ---- the loop ------------------------------------------------------------------------------------
class _Interrupt:
    """SIGINT (Ctrl-C), SIGTERM (a scheduler, `docker stop`) or SIGHUP: finish the iteration, save,
    exit 128 + the signal's number. A second Ctrl-C interrupts at once, except inside `saving()`,
    where it waits for the files to be whole (then interrupts); a repeated SIGTERM or SIGHUP (a
    scheduler that insists) only lets the save finish."""
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, agreed=False):
        self.signum = None  # the signal the run stops on
        self.flag = False   # stop before the next iteration
        self.received = None  # the first signal received, never cleared
        # agreed: several ranks, whose agreement (parallel.Ranks.agree_interrupt) sets flag and
        # signum from `received`, so that a signal landing on one rank while they agree (or just
        # after) waits for the next agreement rather than stopping that rank alone or being lost
        self.agreed = agreed
        self.previous = {}
        self.in_save, self.deferred = False, False

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: the signals keep their default behaviour
            pass
        return self

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        if not self.flag:
            if not self.agreed:
                self.flag, self.signum = True, signum
        elif signum != signal.SIGINT:
            pass
        elif self.in_save:
            self.deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self, then_interrupt=True):
        """A block a second signal does not cut short (nested blocks count as one); after it the
        signal interrupts, unless `then_interrupt` is False (the run ends there anyway)."""
        outer, self.in_save = self.in_save, True
        try:
            yield
        finally:
            self.in_save = outer
        if self.deferred and not outer and then_interrupt:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
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


class _Progress:
    """The tqdm bar on stderr (or one line per refresh in a log file), and `say` for a line above it."""

    def __init__(self, enabled, total, initial):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            tty = sys.stderr.isatty()
            total = total if total > 0 else None  # a --time-budget run learns its total later
            self.bar = tqdm(total=total, initial=min(initial, total or initial), file=sys.stderr if tty else _LogLines(sys.stderr),
                            unit="it", dynamic_ncols=True, mininterval=0.5 if tty else 30, smoothing=0.05,
                            bar_format="iteration {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def update(self, postfix):
        if self.bar is not None:
            self.bar.set_postfix_str(postfix(), refresh=False)
            self.bar.update(1)

    def say(self, line):
        if self.bar is not None and sys.stderr.isatty():
            self.bar.write(line, file=sys.stderr)
        else:
            _stderr_line(line)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _stderr_line(text):
    print(text, file=sys.stderr, flush=True)


def train(cfg, data, options=None, **fields):
    """Train CFG on DATA; returns a summary dict (status 'finished' or 'interrupted'). `options`: a
    TrainOptions, its `fields` replaced by the keywords (train(cfg, data, srand=1, backup="b"))."""
    return Trainer(cfg, data, dataclasses.replace(options or TrainOptions(), **fields)).run()


class Trainer:
    """One training run, from its checks to its summary: `run()` = setup (in __init__), then
    `step()` per iteration with `validate()`, `sample()` and `checkpoint()` when due, then `finish()`.

    `options` (a TrainOptions) holds everything asked besides the cfg and the corpus. A run that
    does not continue from `backup`'s own checkpoints refuses to replace an earlier run's there
    unless `overwrite`. Raises DarknetpyError for bad input, a diverged loss (nothing
    poisoned is saved) or a failed checkpoint write (the previous checkpoint stays whole).
    `patience` ends the run after that many validations in a row without a new best; `time_budget`
    (seconds) sets max_batches from the speed so far, re-estimated as the run goes (`set_horizon`).
    One training step is `step()`; files are written only by `checkpoint()` (weights, state and
    record), `finish()` (the record) and `open_metrics()`/`log_row()` (the metrics log).
    """

    def __init__(self, cfg, data, options=None):
        self.t0 = time.time()
        self.options = o = options or TrainOptions()
        self.time_budget = None if o.time_budget is None else parse_duration(o.time_budget)
        self.ranks = parallel.start()  # K ranks under mpiexec, else one process (no mpi4py)
        # one training per folder: the lock is taken first if the folder exists, else once it is made
        locked = self.ranks.same(os.path.isdir(o.backup), "the backup folder")  # rank 0's view
        self.lock = self.ranks.on_writer(ckpt.FolderLock)(o.backup) if locked else None  # rank 0 holds it
        with self.unlocked_on_error():  # the checks, in the order that refuses bad input before any write
            self.cfg, self.data = cfg, data
            # a fresh seed is rank 0's, on every rank
            self.srand = self.ranks.same(int(np.random.SeedSequence().entropy % 2**31)) if o.srand is None else o.srand
            self.net = Network(cfg, seed=self.srand)
            if self.net.precision == "bf16" and not self.net.bf16 and self.ranks.writer:
                _stderr_line("darknetpy: precision=bf16 needs a CPU with AMX-BF16 and the C kernels; training in float32")
            if self.net.loss_layer is None:
                raise DarknetpyError("the network has no [softmax] or [cost] layer to train against", cfg)
            if o.learning_rate is not None:
                self.net.hp["learning_rate"] = float(o.learning_rate)
            self.ema = optim.EMA(self.net.ema_alpha) if self.net.ema_alpha else None
            self.rows = self.net.streams * self.net.time_steps  # characters per iteration
            self.max_batches = self.net.hp["max_batches"] if o.max_batches is None else o.max_batches
            if self.max_batches <= 0 and self.time_budget is None:
                raise DarknetpyError("no max_batches: set max_batches=N in [net] or pass --max-batches N "
                                     "(or --time-budget)", cfg)
            self.cfg_hp = dict(self.net.hp)  # the cfg's schedule, which a time budget stretches
            if o.schedule_anchor:  # a resume moved the run's end: the schedule continues from there
                self.cfg_hp["anchor"] = list(o.schedule_anchor)
            self.stretch = o.stretch_schedule
            if o.stretch_schedule:  # a --time-budget run (or one whose end a resume moved): its schedule
                end = self.max_batches if o.previous_end is None else o.previous_end
                self.net.hp = optim.stretch_policy(self.cfg_hp, end)
            self.load_corpus()
            self.ranks.shard(self.net, cfg)  # refuse streams % K; this rank's block of the streams
            # validations every valid_every iterations; None: spaced by iterations and time (validation_due)
            self.valid_every = o.valid_every if o.valid_every is not None else \
                None if self.time_budget is not None else VALID_EVERY
            if o.patience is not None and (self.valid_ids is None or self.valid_every == 0):
                raise DarknetpyError(f"--patience {o.patience}: needs held-out text (--valid-frac) and --valid-every "
                                     "N > 0; leave it out to never stop early")
            self.loss, self.avg, self.valid, self.valid_iteration = None, None, None, None
            self.best, self.bad_validations, self.seconds0, self.stop_reason = None, 0, 0.0, None
            self.start_from_weights()
            if o.previous_end is not None:
                self.continue_schedule(o.previous_end, o.max_batches is None)
            self.iteration = self.net.seen // self.rows
            self.saved = self.iteration if o.weights is not None else None  # the last good checkpoint
            self.saved_path = os.path.abspath(o.weights) if o.weights is not None else None
            self.base = base = os.path.join(o.backup, ckpt.cfg_base(cfg))
            self.paths = {"backup": base + ".backup", "final": base + "_final.weights", "best": base + "_best.weights",
                          "record": base + ".yaml", "metrics": base + ".metrics.csv"}
            self.continuing = o.resumed_from is not None or (  # from one of this run's own checkpoints
                o.weights is not None and os.path.dirname(os.path.abspath(o.weights)) == os.path.abspath(o.backup))
            if not (self.continuing or o.overwrite):
                self.ranks.on_writer(ckpt.refuse_to_replace)(self.paths, cfg)  # rank 0 looks
            self.ranks.on_writer(ckpt.prepare_backup_dir)(o.backup)  # last of the checks (rank 0's)
            if not locked:
                self.lock = self.ranks.on_writer(ckpt.FolderLock)(o.backup)
            self.record = ckpt.Record(self.paths["record"], None)
            self.cfg_copy = self.ranks.on_writer(self.cfg_copy_path)()  # rank 0 alone writes it
            self.cfg_kept = False
            if self.vocabulary is not None and self.ranks.writer:  # rank 0 alone writes
                self.vocabulary.save(base + ".vocab")
            elif not self.continuing and self.ranks.writer and os.path.exists(base + ".vocab"):
                os.unlink(base + ".vocab")  # an earlier run's: tokenized ids are decoded with --tokens
            self.seed_ids = vocabmod.seed_ids(self.vocabulary, self.net)
            # periodic and end-of-run estimates score a bounded slice: their cost does not grow with the corpus
            self.validator = (evaluate.Estimate(datamod.read_ids(self.valid_ids, 0, datamod.VALID_SLICE), self.seed_ids)
                              if self.valid_ids is not None else None)
            self.record.content = self.new_record()
            # rank 0 alone writes checkpoints and the record, with the recurrent state of all
            # streams gathered to it; the others wait for it and share its errors
            self.checkpoint = self.ranks.saving(self.checkpoint, self.net)
            self.writer = ckpt.Writer(background=self.ranks.comm is None)  # ranks: rank 0 writes as they wait
            self.write_record = self.ranks.on_writer(self.record.write)

    @contextlib.contextmanager
    def unlocked_on_error(self):
        """The folder's lock released if the run ends before it starts (its run() releases it after)."""
        try:
            yield
        except BaseException:
            self.unlock()
            raise

    def unlock(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ---- setup -----------------------------------------------------------------------------------
    def load_corpus(self):
        """The corpus as ids (through its vocabulary: vocab.prepare_corpus), split into train_ids and
        valid_ids (None: nothing held out), and the batcher that walks the streams through train_ids."""
        net, data, o = self.net, self.data, self.options
        ids, self.vocabulary = vocabmod.prepare_corpus(self.cfg, net, data, o.vocab, o.tokenized, o.weights,
                                                       o.max_vocab, find=ckpt.find_vocab)
        self.valid_frac = datamod.default_valid_frac(len(ids), net.time_steps) if o.valid_frac is None else o.valid_frac
        self.train_ids, self.valid_ids = datamod.split_corpus(ids, self.valid_frac, data)
        net.text_chars = len(self.train_ids)  # an epoch, for the updates' planned passes (Network.update)
        self.corpus_sha = datamod.sha256(ids, len(self.train_ids), as_int32=o.tokenized)  # in chunks: no copy
        self.batcher = datamod.StreamBatcher(self.train_ids, net.streams, net.time_steps,
                                             np.random.default_rng([self.srand, 1]), data)

    def start_from_weights(self):
        """Load --weights and, unless --clear, the .state.npz beside them (optimizer, data walk,
        the best validation so far)."""
        weights = self.options.weights
        if weights is None:
            return
        net = self.net
        net.load_weights(weights)
        if self.options.clear:
            net.seen = 0
            return
        with open(weights, "rb") as f:
            meta, arrays = ckpt.read_state(weights + STATE_SUFFIX, f.read())
        if meta is None:
            if arrays != "missing":
                _stderr_line(f"warning: {weights}{STATE_SUFFIX}: ignored, {arrays}; the optimizer starts afresh")
            return
        ckpt.restore_state(net, self.batcher, meta, arrays, weights + STATE_SUFFIX)
        if self.ema is not None and meta.get("ema"):
            self.ema.load(ckpt.saved_arrays(net, arrays, "ema", meta["ema"]["arrays"], weights + STATE_SUFFIX))
        self.ranks.restored(net)  # this rank's block of the state saved whole
        self.avg, self.best = meta.get("avg_loss"), meta.get("best")
        if self.best is not None:  # named relative to the checkpoint's folder; here, to BACKUP's
            self.best["weights"] = ckpt.relative(ckpt.resolve(self.best["weights"], os.path.dirname(
                os.path.abspath(weights))), self.options.backup)
        self.bad_validations, self.seconds0 = meta.get("bad_validations", 0), meta.get("seconds", 0.0)
        if meta.get("corpus_sha256") not in (None, self.corpus_sha):
            _stderr_line(f"warning: {self.data}: the training text differs from the one "
                         f"{weights} was trained on; continuing on this one")

    def continue_schedule(self, previous_end, budget_sets_end):
        """--resume of a run that ended (or was to end) at update `previous_end`. A --time-budget
        sets the end anew (at first from the run's speed so far). When the end moves, a run whose
        schedule is stretched to its end (a --time-budget run) has the schedule still ahead spread
        over the updates left, or started again if it had reached its end (optim.continue_policy);
        a run on the cfg's schedule (Darknet's, by update number) keeps it, and only a run past
        its end (the cfg's max_batches) starts it again."""
        n = self.net.batch_num
        if self.time_budget is not None and budget_sets_end:
            per_update = self.seconds0 / n if n and self.seconds0 > 0 else None
            self.max_batches = n + (max(1, int(self.time_budget / per_update)) if per_update else max(n, 1))
        moved = self.time_budget is not None or self.max_batches != previous_end
        if not moved or self.cfg_hp["max_batches"] <= 0 or self.max_batches <= n:
            return
        if self.stretch or self.time_budget is not None or optim.done(self.net.hp, n) >= 1:
            self.net.hp = optim.continue_policy(self.cfg_hp, self.net.hp, n, self.max_batches)
            self.cfg_hp["anchor"], self.stretch = self.net.hp["anchor"], True

    def cfg_copy_path(self):
        """Where the run keeps a copy of its cfg, which --resume reads, so that the folder holds all
        of its run but the corpus: <cfg stem>.cfg in BACKUP, unless a file of another origin (not
        an earlier run's copy) has that name; then the cfg where it is. `checkpoint` writes it."""
        target = self.base + ".cfg"
        if not os.path.exists(target) or os.path.samefile(self.cfg, target):
            return target
        with open(self.cfg, "rb") as a, open(target, "rb") as b:
            same = a.read() == b.read()
        ours = ckpt.earlier_record(self.paths["record"]).get("cfg") == os.path.basename(target)
        return target if same or ours else self.cfg

    def keep_cfg(self):
        """Write the copy of the cfg (once, with the run's first checkpoint)."""
        if os.path.exists(self.cfg_copy) and os.path.samefile(self.cfg, self.cfg_copy):
            return
        try:
            with open(self.cfg, "rb") as f:
                atomic.write(self.cfg_copy, f.read())
        except OSError as e:
            raise ckpt.write_error(self.cfg_copy, e, "copy of the cfg") from None

    def new_record(self):
        """The run record's content at the start: what was asked and what the network is."""
        net, opt, o, name = self.net, self.net.optimizer, self.options, self.record.name
        weights = o.weights
        earlier = ckpt.earlier_record(o.resumed_from or self.paths["record"]) if weights is not None else {}
        copy = self.base + ".cfg"
        source = os.path.abspath(self.cfg)
        if os.path.exists(copy) and os.path.samefile(self.cfg, copy):  # resumed from the copy: where it came from
            source = earlier.get("cfg_source") or source
        corpus = vocabmod.record(self.vocabulary, self.data, self.base + ".vocab")
        if corpus["vocab"]:
            corpus["vocab"]["file"] = name(corpus["vocab"]["file"])
        record = {
            "cfg": name(self.cfg_copy or self.cfg), "cfg_source": source,  # (rank 0 knows the copy)
            "data": os.path.abspath(self.data) if self.data != "-" else self.data, "status": "running",
            "options": dataclasses.replace(  # as asked, with what the run chose where they were left out
                o, vocab=self.vocabulary.mode if self.vocabulary else None, max_batches=int(self.max_batches),
                valid_frac=float(self.valid_frac), srand=int(self.srand), stretch_schedule=bool(self.stretch),
                schedule_anchor=self.cfg_hp.get("anchor")).record(),
            "started_from": {"weights": name(weights) if weights else None, "clear": bool(o.clear),
                             "resumed_from": name(o.resumed_from) if o.resumed_from else None},
            "hyperparameters": {
                "inputs": net.inputs, "outputs": net.outputs, "batch": net.batch,
                "subdivisions": net.subdivisions, "streams": net.streams, "time_steps": net.time_steps,
                "chars_per_update": net.batch * net.time_steps, "max_batches": int(self.max_batches),
                **opt.hyperparameters(), **net.hp,
                **({"ema_alpha": net.ema_alpha} if self.ema is not None else {}),  # best and final: the average
                "parameters": int(sum(v.size for v in net.params().values())),
                "train_chars": int(len(self.train_ids)),
                "valid_chars": int(len(self.valid_ids)) if self.valid_ids is not None else 0,
            },
            "corpus": corpus,
            "metrics": name(self.paths["metrics"]),
            **self.ranks.record(net),  # ranks, streams_per_rank (nothing for one process)
            "progress": {}, "checkpoints": {"latest": None, "backup": None, "final": None, "numbered": []},
        }
        if self.best is not None:
            record["best"] = self.best
        cps = earlier.get("checkpoints")
        if isinstance(cps, dict):  # continuing a run: keep its list of numbered checkpoints
            folder = os.path.dirname(os.path.abspath(o.resumed_from or self.paths["record"]))
            record["checkpoints"]["numbered"] = [name(ckpt.resolve(p, folder)) for p in cps.get("numbered") or []]
        return record

    # ---- the loop --------------------------------------------------------------------------------
    def run(self):
        """Train until max_batches updates, a stop (patience, time budget) or a signal; returns the
        summary dict."""
        net = self.net
        self.progress = self.metrics = None
        status = "finished"
        try:  # a Ctrl-C from here on finds the bar and the log to close, before its one line is printed
            self.progress = _Progress(self.options.progress and self.ranks.writer, self.max_batches * net.subdivisions, self.iteration)
            self.metrics = self.ranks.metrics(self.open_metrics)  # rank 0 alone writes the rows
            self.start, self.start_updates = time.time(), net.batch_num
            self.valid_seconds = 0.0  # the last validation's duration: the end of a time budget keeps it free
            self.horizon_at = None if self.time_budget is None else min(60.0, max(1.0, 0.05 * self.time_budget))
            self.horizon_pending = self.time_budget is not None  # until set_horizon, the budget alone ends the run
            self.valid_due, self.valid_mark = False, (self.iteration, 0.0)  # the last validation (it, elapsed)
            self.last_row = (self.iteration, self.start)
            # overflow in a diverging run is reported as a non-finite loss, not as numpy warnings
            # an error of one rank alone stops the others at once
            with _Interrupt(agreed=self.ranks.comm is not None) as self.interrupt, np.errstate(all="ignore"), self.ranks.stopping():
                while (self.horizon_pending or net.batch_num < self.max_batches or self.max_batches <= 0) \
                        and self.stop_reason is None:
                    self.ranks.agree_interrupt(self.interrupt)  # every rank stops at one iteration
                    if self.interrupt.flag:
                        status = "interrupted"
                        break
                    self.step()
                    self.after_step()
                self.finish(status)
                self.metrics.close()
                self.unlock()  # while the handlers stand: a last SIGTERM cannot kill the run before it
        except BaseException:
            self.writer.wait(raise_error=False)  # the folder stays locked until a checkpoint being written is whole
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.metrics is not None:
                self.metrics.close()
            self.unlock()
        signame = signal.Signals(self.interrupt.signum).name if self.interrupt.signum else None
        return {**self.progress_fields(), "status": status, "checkpoint": self.saved_path,
                "max_batches": self.max_batches, "record": os.path.abspath(self.paths["record"]),
                "best": self.shown_best(), "reason": self.stop_reason, "signal": signame, "unit": self.unit[0],
                "ema": self.ema.alpha if self.ema is not None else None,
                "exit_code": 128 + self.interrupt.signum if status == "interrupted" else 0}

    def step(self):
        """One training iteration: a datum through forward, backward and (when due) the update."""
        net, ranks = self.net, self.ranks
        x, y = self.batcher.next_batch(ranks.part)  # this rank's block of the streams (all of them alone)
        updates = net.batch_num
        cost = ranks.sum(float(net.train_step(x, y, ranks.part, ranks.before_update, self.ema)))  # of all streams
        if net.batch_num != updates:
            ranks.after_update(net)
        self.iteration = net.seen // self.rows
        loss = cost / self.rows
        if not math.isfinite(loss):
            raise self.diverged(f"non-finite loss ({loss})")
        self.loss = loss
        self.avg = loss if self.avg is None else 0.9 * self.avg + 0.1 * loss
        for s in self.batcher.reseat(ranks.part):
            net.reset_state(int(s))

    def after_step(self):
        """Progress, then what is due at this iteration: validation, the stops (patience, time
        budget), the metrics row, a sample, checkpoints."""
        it, o = self.iteration, self.options
        self.writer.check()  # a background checkpoint write that failed stops the run here
        self.progress.update(self.postfix)
        validated = self.validation_due() and self.validate()
        if validated and self.best["iteration"] == it:
            self.checkpoint(self.paths["best"], "best")
        if o.patience is not None and self.bad_validations >= o.patience:
            self.stop_reason = (f"stopped early: no better validation in {o.patience} in a row "
                                f"(--patience {o.patience})")
        if self.time_budget is not None:
            self.watch_time_budget()
        ending = self.stop_reason is not None or (not self.horizon_pending and 0 < self.max_batches <= self.net.batch_num)
        if not ending and (validated or (o.log_every > 0 and it % o.log_every == 0)):
            self.log_row()  # the last iteration's row comes from finish(), after its validation
        if o.sample_every > 0 and it % o.sample_every == 0 and self.ranks.writer:  # rank 0's
            self.sample()
        if it % BACKUP_EVERY == 0:
            self.checkpoint(self.paths["backup"], "backup")
        if o.save_every > 0 and it % o.save_every == 0:
            self.checkpoint(f"{self.base}_{it}.weights", "numbered")

    def validation_due(self):
        """Whether this iteration validates: every valid_every iterations, or (a --time-budget run
        without --valid-every) the first that is both VALID_EVERY iterations and a tenth of the
        budget after the last validation (watch_time_budget decides): at most about ten, so that
        a faster step does not make them a larger share of the run."""
        if self.valid_every is None:
            return self.valid_due
        return self.valid_every > 0 and self.iteration % self.valid_every == 0

    def postfix(self):
        rate = self.rate()
        rate = "-" if rate is None else f"{rate:.3g}"
        return (f"loss {self.loss:.4f}  avg {self.avg:.4f}  rate {rate}  "
                f"epoch {self.net.seen / len(self.train_ids):.2f}")

    def rate(self):
        """The rate of the last update (or, before one, of the next; never drawing from the rng)."""
        net = self.net
        if net.last_rate is None and net.hp["policy"] != "random":  # "random" would draw from the rng
            return net.learning_rate()
        return net.last_rate

    def finish(self, status):
        """The last checkpoints, metrics row and record: after a signal the backup; else the backup,
        a validation (and the best checkpoint if it is the best) and the final weights."""
        with self.interrupt.saving(then_interrupt=False):
            self.writer.wait()  # `saved` is the last checkpoint written whole
        if status == "finished":
            if self.options.valid_full and self.valid_ids is not None and len(self.valid_ids) > datamod.VALID_SLICE:
                self.validator = evaluate.Estimate(self.valid_ids, self.seed_ids)  # --valid-full: all of it
                self.valid_iteration = None
            validated = self.valid_iteration != self.iteration and self.validate()
            self.checkpoint(self.paths["backup"], "backup")
            if validated and self.best["iteration"] == self.iteration:
                self.checkpoint(self.paths["best"], "best")
            self.checkpoint(self.paths["final"], "final")
        with self.interrupt.saving(then_interrupt=False):  # after a signal, more wait for the record to say so
            latest = self.record.content["checkpoints"]["latest"]
            # rank 0 alone knows what it saved, and decides for every rank
            if status == "interrupted" and self.ranks.same(self.saved != self.iteration
                                                           or latest != self.record.name(self.paths["backup"])):
                self.checkpoint(self.paths["backup"], "backup")
            self.writer.wait()  # the last checkpoints whole (a failed one ends the run here), then the row and record
            if self.last_row[0] != self.iteration:
                self.log_row()
            self.record.content["stop_reason"] = self.stop_reason
            self.write_record(status, self.progress_fields())

    # ---- validation, metrics, samples, the time budget -------------------------------------------
    def validate(self):
        """Held-out bits per character now, as one line above the bar; a new best is noted in
        `best` (the caller writes its checkpoint). False if there is no held-out text or a signal
        stopped it."""
        if self.validator is None:
            return False
        v0 = time.time()
        with self.averaged():
            bpc = self.ranks.on_writer(self.validator)(self.net, lambda: self.interrupt.flag)  # on rank 0,
        bpc = self.ranks.agreed(bpc, "the validation's result")  # and its result on every rank
        if bpc is None:
            return False
        self.valid_seconds = time.time() - v0
        self.valid, self.valid_iteration = float(bpc), self.iteration
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        avg = f"{self.avg:.4f}" if self.avg is not None else "-"
        unit, what = self.unit
        self.progress.say(f"valid: iteration {self.iteration}  {time.time() - self.t0:.1f} s  loss {loss}  "
                          f"avg {avg}  valid {bpc:.4f} {unit}{self.ema_note()} ({self.validator.count} {what}, "
                          f"{time.time() - v0:.1f} s)")
        if self.best is None or bpc < self.best["valid_bpc"]:
            self.best = {"weights": self.record.name(self.paths["best"]), "iteration": self.iteration,
                         "valid_bpc": float(bpc)}
            self.bad_validations = 0
            self.record.content["best"] = self.best
        else:
            self.bad_validations += 1
        return True

    @property
    def unit(self):
        """(unit, what is counted) of a validation: bits per character, or per token for a words
        vocabulary or --tokenized ids."""
        per_token = self.options.tokenized or (self.vocabulary is not None and self.vocabulary.mode == "words")
        return ("bits per token", "tokens") if per_token else ("bpc", "chars")

    def open_metrics(self):
        """The metrics log; a continuing run keeps the rows up to the checkpoint it starts from."""
        o = self.options
        keep = self.iteration if self.continuing and o.weights is not None and not o.clear else None
        try:
            return metricsmod.MetricsLog(self.paths["metrics"], keep_until=keep)
        except OSError as e:
            raise ckpt.write_error(self.paths["metrics"], e, "metrics log") from None

    def log_row(self):
        now = time.time()
        it0, t_prev = self.last_row
        speed = (self.iteration - it0) * self.rows / (now - t_prev) if now > t_prev and self.iteration > it0 else None
        self.last_row = (self.iteration, now)
        try:
            self.metrics.row(iteration=self.iteration, seconds=self.seconds(), epoch=self.net.seen / len(self.train_ids),
                             loss=self.loss, avg_loss=self.avg, learning_rate=self.rate(), chars_per_s=speed,
                             valid_bpc=self.valid if self.valid_iteration == self.iteration else None)
        except OSError as e:  # a full disk: the checkpoints are atomic, so the last one stands
            raise DarknetpyError(f"cannot write a metrics row ({e.strerror or e}); training stopped at iteration "
                                 f"{self.iteration}, the last checkpoint is intact: free space and --resume",
                                 self.paths["metrics"]) from None

    def seconds(self):
        """Training wall time, summed over this run's resumes."""
        return self.seconds0 + time.time() - self.t0

    def sample(self):
        """--sample-len characters at --sample-temp to stderr, from a private stepper (prepared copies
        of the weights, its own state): the training network, its state and its random streams are
        not touched."""
        vocab = self.vocabulary
        o = self.options
        tokens = [str(i) for i in range(self.net.outputs)] if o.tokenized else None
        newline = b"\n" in vocab.pieces() if vocab is not None else not o.tokenized and self.net.inputs > 10
        asked = GenerationOptions(seed=b"\n" if newline else b"", length=o.sample_len, temperature=o.sample_temp,
                                  srand=self.srand + self.iteration)
        pieces = [piece for _, piece, _ in generation.events(self.net, asked, tokens=tokens, vocab=vocab)]
        # the first piece is the seed's symbol, echoed (an empty seed is id 0, as in `generate`)
        self.progress.say(f"sample at iteration {self.iteration}:\n"
                          + b"".join(pieces[1:]).decode("utf-8", "replace").rstrip("\n"))

    def watch_time_budget(self):
        """Set max_batches from the speed so far, first after 5% of the budget (at most a minute),
        then again after every further tenth of it: the speed drifts, and validations, samples and
        checkpoints take their share, which a rate over the whole run so far includes. Stop at the
        deadline in any case. Without --valid-every, also say whether the next iteration validates."""
        # rank 0's clock decides the stop and the horizon for every rank
        elapsed = self.ranks.agreed(time.time() - self.start, "the time budget")
        done = self.net.batch_num - self.start_updates
        it0, t0 = self.valid_mark
        self.valid_due = (self.valid_every is None and self.iteration + 1 - it0 >= VALID_EVERY
                          and elapsed - t0 >= self.time_budget / VALID_TIMES)
        if self.valid_due:
            self.valid_mark = (self.iteration + 1, elapsed)
        if elapsed >= self.time_budget:
            self.stop_reason = f"the time budget of {self.time_budget:g} s is spent"
        elif done >= 3 and elapsed >= self.horizon_at:
            self.set_horizon(elapsed / done, elapsed)
            self.horizon_at = elapsed + 0.1 * self.time_budget

    def set_horizon(self, per_update, elapsed):
        """max_batches = the updates done + as many as the rest of the budget (after `elapsed` s)
        allows at `per_update` seconds each, less the time of a final validation; the cfg's
        schedule is stretched to it (optim.stretch_policy)."""
        # rank 0's validation time, as its clock
        remaining = self.time_budget - elapsed - self.ranks.agreed(self.valid_seconds, "the validation's time")
        self.max_batches = self.net.batch_num + max(1, int(remaining / per_update))
        self.horizon_pending = False
        self.net.hp = optim.stretch_policy(self.cfg_hp, self.max_batches)
        self.stretch = True
        if self.progress.bar is not None:
            self.progress.bar.total = self.max_batches * self.net.subdivisions
        options = self.record.content["options"]
        options.update(max_batches=int(self.max_batches), stretch_schedule=True)
        self.record.content["hyperparameters"].update(self.net.hp)
        self.record.content["time_budget"] = {
            "seconds": self.time_budget, "max_batches": int(self.max_batches),
            "seconds_per_update": round(per_update, 6),
            "why": (f"{self.net.batch_num - self.start_updates} updates took {per_update:.4g} s each, so "
                    f"{self.max_batches - self.net.batch_num} more fit in the {remaining:.0f} s left; the "
                    f"cfg's {self.net.hp['policy']} schedule is stretched to end at update {self.max_batches}")}

    # ---- checkpoints -----------------------------------------------------------------------------
    def checkpoint(self, path, kind):
        """Commit weights + .state.npz at `path`, then rewrite the record naming it as `kind`. The
        weights' bytes and a copy of the state's arrays are taken here, from the run as it is now;
        the .npz, its writing (write, fsync, rename) and the record run in the background
        (ckpt.Writer) while training goes on, after the checkpoints before it. A second signal waits
        until the files are whole."""
        net = self.net
        if not all(np.isfinite(v).all() for v in net.params().values()):
            raise self.diverged("non-finite weights before checkpoint")
        extra = {"iteration": self.iteration, "avg_loss": self.avg, "corpus_sha256": self.corpus_sha,
                 "best": self.best, "bad_validations": self.bad_validations, "seconds": self.seconds(),
                 "vocab": ckpt.vocab_entry(self.vocabulary)}  # the vocabulary travels with the weights
        with self.averaged(kind in ("best", "final")) as trained:  # the model the run hands over
            wbytes = weightsmod.to_bytes(net)
            state = ckpt.state_arrays(net, self.batcher, wbytes, extra, self.ema, trained, copy=True)
        self.record.add_checkpoint(path, kind)
        record, iteration, first = self.record.text("running", self.progress_fields()), self.iteration, not self.cfg_kept
        self.cfg_kept = True

        def write():
            try:
                ckpt.commit([(path + STATE_SUFFIX, ckpt.npz_bytes(state)), (path, wbytes)])
            except OSError as e:
                raise ckpt.write_error(path, e) from None
            self.saved, self.saved_path = iteration, os.path.abspath(path)
            if first:
                self.keep_cfg()
            self.record.put(record)
        with self.interrupt.saving():
            self.writer.submit(write)

    def averaged(self, handed_over=True):
        """With [net] ema_alpha, the EMA's average in the network's weights for a block that scores
        or saves the model the run hands over (`handed_over`); yields the trained weights (or None)."""
        return self.ema.applied(self.net) if self.ema is not None and handed_over else contextlib.nullcontext()

    def ema_note(self):
        """What a validation figure is of: " (EMA D)" where it scores the average."""
        return f" (EMA {self.ema.alpha:g})" if self.ema is not None else ""

    def diverged(self, what):
        self.writer.wait()  # the checkpoint being written, if any, is the last good one
        last = (f"the last good checkpoint is {self.saved_path} (iteration {self.saved})"
                if self.saved_path else "no checkpoint was written in this run")
        if self.best is not None:
            last += (f", the best {self.shown_best()['weights']} (iteration {self.best['iteration']}, "
                     f"{self.best['valid_bpc']:.4f} {self.unit[0]})")
        return DarknetpyError(f"{what} at iteration {self.iteration}: training diverged and stopped "
                              f"without saving; {last}; lower learning_rate or set clip in [net]", self.cfg)

    def shown_best(self):
        """The best validation so far, its weights as a path from here (the record names it relative)."""
        return None if self.best is None else dict(self.best, weights=ckpt.resolve(self.best["weights"], self.record.folder))

    def progress_fields(self):
        net = self.net
        return {"seen": net.seen, "iteration": self.iteration, "updates": net.batch_num,
                "epoch": round(net.seen / len(self.train_ids), 4), "seconds": round(time.time() - self.t0, 1),
                "train_loss": self.loss, "avg_loss": self.avg,
                "valid_bpc": self.valid, "valid_iteration": self.valid_iteration}


def format_summary(s):
    """The one summary line printed at the end of a run."""
    avg = f"{s['avg_loss']:.4f}" if s["avg_loss"] is not None else "-"
    unit = s.get("unit", "bpc")
    ema = f" (EMA {s['ema']:g})" if s.get("ema") else ""
    valid = f"{s['valid_bpc']:.4f} {unit}{ema}" if s["valid_bpc"] is not None else "-"
    best = s.get("best")
    best = (f", best valid {best['valid_bpc']:.4f} {unit} at iteration {best['iteration']} ({best['weights']})"
            if best else "")
    line = (f"{s['status']}: iteration {s['iteration']}, update {s['updates']} of max_batches "
            f"{s['max_batches']}, seen {s['seen']}, epoch {s['epoch']:.2f}, {s['seconds']:.0f} s, "
            f"avg loss {avg}, valid {valid}{best}; saved {s['checkpoint']}")
    if ema and s["status"] == "finished":
        line += f"; the final and best weights are the average of the weights{ema}"
    if s.get("signal"):
        line += (f" (weights, .state.npz and the run record) on {s['signal']}; continue with "
                 f"`darknetpy train --resume {ckpt.quote(s['record'])}`")
    if s.get("reason"):
        line += f"; {s['reason']}"
    return line
