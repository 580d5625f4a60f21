"""Data-parallel training over MPI: `mpiexec -n K darknetpy train CFG DATA` (the optional extra
`darknetpy[mpi]`: mpi4py and MPICH's wheel).

Every rank builds the same network from the same seed and walks the same S = batch/subdivisions
streams through the corpus (the StreamBatcher's offsets and rng stay identical on every rank), but
runs only its block of S/K of them: rank r takes streams [r*S/K, (r+1)*S/K). Before each update
the ranks' gradient buffers (every slot's `upd`, packed into one flat array) are summed with one
Allreduce, so every rank makes the update one process would make, up to the order of the float
sums; clipping inside the optimizer then sees the global norm. A [dropout] layer draws the masks
of all S streams, as one process would, and keeps its block. Batchnorm statistics are the one
thing that differs: each rank normalizes over its own streams.

SGD keeps momentum's leftover in `upd` after an update; it lives on rank 0 alone (the other ranks
zero theirs), so the next sum counts it once. Every CHECK_EVERY updates the ranks compare a
checksum of their weights and stop if they differ.

Rank 0 alone writes (checkpoints, the run record, validation, the progress bar); the recurrent
state of all streams is gathered to it for each checkpoint, so a checkpoint does not depend on K.
The other ranks print only errors of their own. Every collective is nonblocking and polled
against a deadline, so a rank that dies or hangs stops the others with one line instead of a hang.
A rank that fails on its own (rank 0 writing a metrics row to a full disk, say) tells the others
at once with a point-to-point message that every wait also polls, and rank 0 prints the line.

This module imports mpi4py only when an MPI launcher started the process as one of several ranks
(it sets PMI_SIZE, OMPI_COMM_WORLD_SIZE or PMIX_RANK); otherwise `start()` returns a single rank
whose every method is a no-op, and darknetpy runs exactly as without MPI.
"""
import atexit
import contextlib
import json
import os
import signal
import sys
import time
import traceback
import zlib

import numpy as np

from .errors import DarknetpyError
from .launcher import launched

TIMEOUT = float(os.environ.get("DARKNETPY_MPI_TIMEOUT", 120))  # seconds a training collective may wait
WRITER_TIMEOUT = max(TIMEOUT, 3600.0)  # while rank 0 checkpoints or validates
CHECK_EVERY = 16    # updates between weight checksum comparisons
MESSAGE_BYTES = 4096  # room for an error message broadcast from rank 0
STOP_TAG = 77       # the message of a rank that stops on its own error
DONE_TAG = 78       # rank 0's word, at its exit, to the ranks it stopped that they may exit too


def pack(text):
    """An error message as the fixed-size buffer the ranks send (empty: no error)."""
    buf = np.zeros(MESSAGE_BYTES, np.uint8)
    raw = text.encode()[:MESSAGE_BYTES - 1]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    return buf


def unpack(buf):
    return bytes(buf).rstrip(b"\0").decode(errors="replace")


def start():
    """The ranks of this run: MPI's world when launched as several ranks, else one process."""
    rank, size = launched()
    if size == 1:
        return Ranks(None)
    try:
        from mpi4py import MPI
    except ImportError:
        if rank:  # rank 0 says it, once
            sys.exit(2)
        raise DarknetpyError("started by an MPI launcher as one of several ranks, but mpi4py is not "
                             "installed; pip install \"darknetpy[mpi]\", or run without mpiexec") from None
    return Ranks(MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None)


class Ranks:
    """This process's place among K data-parallel ranks; comm=None is one process (K = 1)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank() if comm else 0
        self.size = comm.Get_size() if comm else 1
        self.writer = self.rank == 0
        self.part = slice(None)
        self.updates = 0
        self.flat = None    # the packed gradients, (sum of slot sizes,)
        self.writing = False
        self.stderr = sys.stderr
        if comm is not None:  # mpiexec forwards SIGTERM: checkpoint and stop as on Ctrl-C
            signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
            from mpi4py import MPI
            self.stop_message = np.zeros(MESSAGE_BYTES, np.uint8)
            self.stop_request = comm.Irecv(self.stop_message, source=MPI.ANY_SOURCE, tag=STOP_TAG)
            self.abandoned = False  # left a collective unfinished (a timeout, another rank's stop)
            self.stopped_by = None  # the rank whose stop message this one stopped on
            self.told = []          # the ranks this one sent its stop message to
            atexit.register(self.at_exit)  # runs before mpi4py's MPI_Finalize (registered earlier)
        if self.rank:  # other ranks print only their own errors: rank 0 prints the shared ones
            sys.stderr = open(os.devnull, "w")
            sys.excepthook = lambda *exc: traceback.print_exception(*exc, file=self.stderr)

    # ---- collectives with a deadline -------------------------------------------------------------
    def wait(self, request, what, timeout=TIMEOUT):
        """Poll a nonblocking collective until it completes; stop with one line after `timeout` s."""
        t0 = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - t0
            if waited > timeout:
                message = (f"rank {self.rank} of {self.size}: no answer from the other ranks for "
                           f"{timeout:.0f} s in {what}; a rank died or hangs, so this one stops (set "
                           "DARKNETPY_MPI_TIMEOUT=SECONDS to wait longer)")
                if self.rank:
                    print(f"darknetpy: {message}", file=self.stderr, flush=True)
                self.abandoned = True
                raise DarknetpyError(message)
            if waited > 0.01:  # a long wait (rank 0 validating): poll without taking a core
                self.check_stopped()
                time.sleep(0.001)

    def check_stopped(self):
        """Raise the error another rank stopped with, if one did (see `stopping`)."""
        from mpi4py import MPI
        status = MPI.Status()
        if self.stop_request.Test(status):
            error = DarknetpyError(f"rank {status.Get_source()} of {self.size} stopped: {unpack(self.stop_message)}")
            error.relayed = True  # not sent on again
            self.abandoned = True
            self.stopped_by = status.Get_source()
            raise error

    def at_exit(self):
        """Withdraw the pending receive of `stopping`'s message, which MPI would otherwise find
        outstanding at finalize (UCX warns of it). A rank that left a collective unfinished exits
        with its error's code 2 without finalizing: MPI cannot cancel a collective, and finalizing
        with one pending prints MPICH's "pending references" beside the one line of the error.
        MPICH's launcher kills every rank as soon as one exits without finalizing, so a rank that
        rank 0 stopped first waits for rank 0's word that it is done (its line printed, its folder's
        lock released); rank 0 sends it here, to the ranks it stopped."""
        sys.stdout.flush()
        self.stderr.flush()
        if self.writer and self.told:
            self.send(pack("done"), DONE_TAG, self.told)
        if self.abandoned:
            if self.stopped_by == 0:
                self.wait_for_done()
            os._exit(2)
        if not self.stop_request.Test():
            self.stop_request.Cancel()
            self.stop_request.Wait()

    @contextlib.contextmanager
    def stopping(self):
        """Around the training loop: an error this rank meets is sent to every other rank, which
        may be waiting for it in a collective (a rank-0-only write, say), so that they stop now
        instead of after TIMEOUT; rank 0 prints the line (one of its own, or the one it got).
        Ranks that meet the same error together never read it."""
        try:
            yield
        except BaseException as e:
            if self.comm is not None and not getattr(e, "relayed", False):
                self.tell_others(str(e) or type(e).__name__)
            raise

    def tell_others(self, message):
        self.told = [r for r in range(self.size) if r != self.rank]
        self.send(pack(message), STOP_TAG, self.told)

    def send(self, text, tag, ranks):
        """Send the buffer `text` to `ranks` on the way out, giving up after a second."""
        try:
            sends = [self.comm.Isend(text, dest=r, tag=tag) for r in ranks]
            deadline = time.monotonic() + 1.0  # a small message goes out at once; a dead rank never takes it
            while not all(request.Test() for request in sends) and time.monotonic() < deadline:
                time.sleep(0.001)
        except Exception:  # MPI's own error on the way out (a rank already gone): this rank's error stands
            pass

    def wait_for_done(self):
        """Wait (up to TIMEOUT) for rank 0's DONE_TAG message, sent by its at_exit."""
        done = self.comm.Irecv(np.zeros(MESSAGE_BYTES, np.uint8), source=0, tag=DONE_TAG)
        deadline = time.monotonic() + TIMEOUT
        while not done.Test() and time.monotonic() < deadline:
            time.sleep(0.001)

    def allreduce(self, buf, op, what, timeout=TIMEOUT):
        from mpi4py import MPI
        self.wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=op), what, timeout)
        return buf

    def bcast(self, buf, what, timeout=TIMEOUT):
        self.wait(self.comm.Ibcast(buf, root=0), what, timeout)
        return buf

    # ---- setting up ----------------------------------------------------------------------------
    def same(self, value, what="sharing the seed"):
        """Rank 0's integer (the fresh --srand, or a decision only rank 0 can make) on every rank."""
        if self.comm is None:
            return value
        return int(self.bcast(np.array([value], np.int64), what)[0])

    def agreed(self, value, what, timeout=TIMEOUT):
        """Rank 0's json-able `value` (a validation's result, its elapsed time) on every rank."""
        if self.comm is None:
            return value
        text = json.dumps(value).encode() if self.writer else b""
        buf = np.zeros(self.same(len(text), what), np.uint8)
        if self.writer:
            buf[:] = np.frombuffer(text, np.uint8)
        return json.loads(bytes(self.bcast(buf, what, timeout)))

    def shard(self, net, path):
        """Give this rank its block of the streams (`part`, which the trainer hands to the batcher
        and to net.train_step), or refuse (on every rank, rank 0 prints) a stream count that does
        not divide by K, or batchnorm with too few streams per rank."""
        if self.comm is None:
            return
        if net.streams % self.size:
            raise DarknetpyError(f"the cfg's {net.streams} streams (batch/subdivisions) do not split evenly "
                                 f"over {self.size} ranks; run with a rank count that divides "
                                 f"{net.streams}, or change batch", path)
        n = net.streams // self.size
        self.part = slice(self.rank * n, (self.rank + 1) * n)
        net.check_batchnorm(n, " on each rank", "run fewer ranks, or raise batch")  # before any work, on every rank

    def record(self, net):
        """The run record's note of the split (nothing for one process)."""
        if self.comm is None:
            return {}
        return {"ranks": self.size, "streams_per_rank": net.streams // self.size}

    # ---- the gradient sum and the drift check (around net.update) ---------------------------------
    @property
    def before_update(self):
        """The hook net.train_step runs on the gradients before an update: their sum over the
        ranks (None for one process)."""
        return None if self.comm is None else self.sum_gradients

    def sum_gradients(self, slots):
        """Sum every slot's update buffer over the ranks, in one flat Allreduce."""
        from mpi4py import MPI
        if self.flat is None or self.flat.dtype != slots[0][1].dtype:
            self.flat = np.empty(sum(u.size for _, u, _ in slots), slots[0][1].dtype)
        views, at = [], 0
        for _, u, _ in slots:
            views.append(self.flat[at:at + u.size].reshape(u.shape))
            at += u.size
        for (_, u, _), v in zip(slots, views):
            v[...] = u
        self.allreduce(self.flat, MPI.SUM, "the gradient sum")
        for (_, u, _), v in zip(slots, views):
            u[...] = v

    def after_update(self, net):
        """Momentum's leftover stays on rank 0 alone; every CHECK_EVERY updates compare the weights."""
        if self.comm is None:
            return
        slots = net.slots()
        if self.rank and net.optimizer.name == "sgd":
            for _, u, _ in slots:
                u[...] = 0
        self.updates += 1
        if self.updates % CHECK_EVERY == 0:
            self.check_same(slots, f"update {net.batch_num}")

    def check_same(self, slots, when):
        """Stop every rank if their weights are not bit for bit the same (a CRC of each parameter)."""
        from mpi4py import MPI
        crc = 0
        for p, _, _ in slots:
            crc = zlib.crc32(np.ascontiguousarray(p).data, crc)
        both = self.allreduce(np.array([crc, -crc], np.int64), MPI.MAX, "the weight check")
        if both[0] != -both[1]:
            raise DarknetpyError(f"the ranks' weights differ at {when} (their checksums disagree); training "
                                 "stopped, the last checkpoint is intact; please report this with the cfg")

    # ---- the loop --------------------------------------------------------------------------------
    def sum(self, cost):
        """The datum's cost over all streams."""
        if self.comm is None:
            return cost
        from mpi4py import MPI
        return float(self.allreduce(np.array([cost], np.float64), MPI.SUM, "the cost sum")[0])

    def any(self, value, what="the stop check"):
        """The largest of the ranks' integers (0: none set one), on every rank."""
        if self.comm is None:
            return value
        from mpi4py import MPI
        return int(self.allreduce(np.array([int(value)], np.int64), MPI.MAX, what)[0])

    def agree_interrupt(self, interrupt):
        """Every rank stops at the same iteration, on the signal any rank got (train._Interrupt). A
        signal that lands while the ranks agree is not lost: it is in `received` at the next one."""
        if self.comm is not None:
            signum = self.any(interrupt.received or 0)
            if signum:
                interrupt.signum, interrupt.flag = signum, True

    def on_writer(self, fn):
        """`fn` run by rank 0 alone; the others wait for it and raise the same error if it fails."""
        if self.comm is None:
            return fn

        def run(*args, **kwargs):
            if self.writing:  # a writer call inside another (checkpoint writes the record)
                return fn(*args, **kwargs)
            error, message, result = None, pack(""), None
            if self.writer:
                self.writing = True
                try:
                    result = fn(*args, **kwargs)
                except DarknetpyError as e:
                    error, message = e, pack(str(e))
                finally:
                    self.writing = False
            self.bcast(message, "waiting for rank 0's checkpoint or validation", WRITER_TIMEOUT)
            if error is not None:
                raise error
            if message[0]:
                raise DarknetpyError(unpack(message))
            return result  # rank 0's; None on the others
        return run

    def metrics(self, open_log):
        """The metrics log, opened by rank 0 alone (the others' rows go nowhere; they share its error)."""
        log = self.on_writer(open_log)()
        return log if self.writer else Unwritten()

    def saving(self, checkpoint, net):
        """`checkpoint` with the recurrent state of all streams gathered to rank 0 while it saves."""
        if self.comm is None:
            return checkpoint

        def run(*args, **kwargs):
            with self.whole_state(net):
                return self.on_writer(checkpoint)(*args, **kwargs)
        return run

    @contextlib.contextmanager
    def whole_state(self, net):
        """On rank 0, every recurrent layer's carried state for all streams (S, outputs) in place
        of its block, and the update buffers summed over the ranks (between two updates each rank
        holds its own streams' gradients so far); each rank's own are put back afterwards."""
        own = [(u, u.copy()) for _, u, _ in net.slots()]
        self.sum_gradients(net.slots())
        saved = dict(net.states)
        for key, block in saved.items():
            whole = np.empty((self.size * block.shape[0],) + block.shape[1:], block.dtype) if self.writer else None
            self.wait(self.comm.Igather(np.ascontiguousarray(block), whole, root=0), "gathering the state")
            if self.writer:
                net.states[key] = whole
        try:
            yield
        finally:
            net.states.update(saved)
            for u, mine in own:
                u[...] = mine

    def restored(self, net):
        """After loading a checkpoint (saved whole): keep this rank's block of each stream's state;
        the saved update buffers (momentum's leftover, gradients of an unfinished batch) stay on
        rank 0 alone, so the next sum counts them once."""
        if self.comm is None:
            return
        for key, whole in net.states.items():
            net.states[key] = whole[self.part].copy()
        if self.rank:
            for _, u, _ in net.slots():
                u[...] = 0


class Unwritten:
    """A metrics log that writes nothing: the other ranks' (rank 0 writes the rows)."""

    def row(self, **values):
        pass

    def close(self):
        pass
