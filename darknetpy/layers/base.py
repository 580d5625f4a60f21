"""What every layer kind shares. `Layer` is the stateless default and the interface every kind
fills in; `Recurrent` holds what the recurrent kinds share: the names and zero arrays of the
per-stream state their steps carry (which the caller owns and hands them), the input projection
of all steps. Also the small array helpers the layers use."""
import numpy as np

from .. import kernels


# Where the products change form (each measured: benchmarks/README.md, "Design measurements").
ROW_PAD = 16                   # floats after each row of a one-hot table: rows off 4 KB strides (_kernels.c)
GEMV_TRANSPOSED_FROM = 256 * 1024  # entries of W from which OpenBLAS's GEMV runs Wᵀ x faster than x W
BIG_STEP_MATRIX = 1 << 20      # entries of a step's A from which the panel kernel wins at 2 streams
PANEL_FROM_STREAMS = {False: 3, True: 2}  # on one thread, the fewest streams the panel kernel wins at
class Buffers:
    """Work arrays kept between calls. A training step reuses them rather than allocating: a fresh
    array of a megabyte or more is new memory from the OS, and its first touch costs a page fault
    per 4 KB (more than the arithmetic done in it). What a forward pass keeps
    for the backward pass is not found here by name but handed over in the layer's `Tape`."""

    def buffer(self, name, shape, dtype=None):
        """The work array `name` of `shape` and the owner's dtype (or `dtype`), reused while they stay."""
        work = self.__dict__.setdefault("_work", {})
        dtype = np.dtype(dtype or self.dtype)
        buf = work.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = work[name] = np.empty(shape, dtype)
        return buf


class Layer(Buffers):
    """The interface of a layer kind, and the default for one without parameters or state.

    A kind is one class in its own file in this package, found by `kind`, the cfg section name
    (`aliases`: other names Darknet accepts). Everything about the kind lives on the class: its
    constructor reads the keys of its section, `describe` fills `info`'s table, `products` feeds
    bench's FLOP model, `params` gives the weights file's order. `forward(x, train, state)` runs
    x (steps, streams, inputs) on `state` (the arrays of `fresh_state`, which the network owns and
    carries from datum to datum) and leaves in it the state after the last step.
    """
    kind = None              # the cfg section name, e.g. "lstm"
    aliases = ()
    loss_at = None           # "any": its loss trains the net wherever it is; "end": only as the last layer
    alexeyab_order = None    # its sub-layers' order in AlexeyAB's weights files, where that differs
    bn_over = "rows"         # batchnorm statistics in training: over all steps*streams rows of a datum
    denses = ()
    state_names = ()         # the names of the per-stream state its steps carry, (streams, outputs) each
    draws_masks = False      # forward(x, train, state, block) draws random masks for the whole datum (Dropout)
    dtype = np.float32

    def __init__(self, section, inputs, rng):
        """Read `section`'s keys (errors at their cfg line); `inputs` features come in; `rng`
        draws the initial weights."""
        self.inputs = self.outputs = inputs

    def describe(self):
        """The activation column of `darknetpy info`'s table."""
        return ""

    def note(self):
        """A line for `darknetpy info` about this layer (e.g. a darknetpy extension), or None."""
        return None

    def next_update(self):
        """The weights were just updated (Network.update): what a layer draws once per update
        (Recurrent's DropConnect mask) is drawn afresh at the next training forward."""

    def slots(self):
        """(parameter, accumulated update, kind) triples for the optimizer, in save order."""
        return [s for d in self.denses for s in d.slots()]

    def astype(self, dtype):
        """Convert every parameter (float64 for finite-difference checks)."""
        self.dtype = np.dtype(dtype)
        for d in self.denses:
            d.astype(dtype)

    def products(self):
        """(in, out, recurrent, reads_layer_input) for each matmul, for bench's FLOP model."""
        return []

    def set_temperature(self, t):
        pass

    def params(self, updates=False):
        """Darknet-named views of the parameters in save order; updates=True: the accumulated
        negative gradients of the trainable ones."""
        return {}

    def backward(self, dy, need_dx):
        return dy

    def fresh_state(self, streams):
        """New zero arrays of the state this layer carries from step to step, one per
        `state_names`, (streams, outputs) each (none here). `forward` and the stepper run on the
        state they are handed, and on nothing else."""
        return []

    def stepper(self, streams, ids_input, state, exact=True):
        """An inference function for one step, x (streams, inputs) or ids (streams,) -> (streams,
        outputs), for generation and scoring, updating `state` (from `fresh_state()`, or the
        network's carried state) in place and nothing else. exact=True: each stream's result is the
        same bits whatever the other streams are (`times`); False allows plain BLAS products.
        Every kind writes its own: a kind without one has no per-step inference."""
        raise NotImplementedError(f"[{self.kind}] has no stepper")

    def to_onnx(self, g, x):
        """Write this layer at inference into the ONNX graph g (export.Graph), reading the value
        named x; return its output's name. A kind without this method cannot be exported."""
        raise g.refuse(f"[{self.kind}] has no ONNX form in this darknetpy version")


def output_units(section):
    """The `output=` of a layer with weights, which must be > 0."""
    n = section.int("output", 1)
    if n <= 0:
        raise section.error(f"output must be > 0, got {n}", "output")
    return n


class Recurrent(Layer):
    """A kind whose steps carry state, `state_names` arrays of (streams, outputs) each.

    DropConnect on the hidden-to-hidden weights (`dropconnect=p`, darknetpy's key; Wan et al. 2013,
    as AWD-LSTM applies it: Merity, Keskar and Socher 2018): in training every update draws one
    mask M ~ Bernoulli(1 - p) over the W of each Dense that `recurrent` names, shared by all the
    steps and streams of the update (every subdivision, every MPI rank: it depends on the rng
    alone), and the forward and backward run on W' = W⊙M/(1-p) (`connected`), so that
    dW += (∂L/∂W')⊙M/(1-p) (`accumulate`). Inference reads W."""
    state_names = ("h",)
    recurrent = ()           # the attribute names of the Denses whose W is hidden-to-hidden
    dropconnect = 0.0
    keep = None              # this update's masks M/(1-p), one per `recurrent` Dense; None: not drawn yet

    bn_over = "streams"      # each step is normalized over the streams

    def read_dropconnect(self, section, rng):
        """The `dropconnect=p` key, p in [0, 1); an error on a kind without a recurrent matrix."""
        if not self.recurrent:
            if "dropconnect" in section.options:
                raise section.error(f"[{self.kind}] has no recurrent (hidden-to-hidden) matrix for dropconnect; "
                                    "remove the key", "dropconnect")
            return
        self.dropconnect, self.rng = section.float("dropconnect", 0.0), rng
        if not 0 <= self.dropconnect < 1:
            raise section.error(f"dropconnect must be in [0, 1), got {self.dropconnect}", "dropconnect")

    def next_update(self):
        self.keep = None

    def connected(self, train):
        """The W of each `recurrent` Dense as a training forward runs it (the kind's Tape keeps them
        for backward): with dropconnect W⊙M/(1-p) in a work array, M drawn at the update's first
        call: one float32 uniform draw over all the recurrent weights from the network's rng, so
        the mask, and the rng after it, are the same however the update's streams are split.
        Else (or not in training) each W itself."""
        denses = [getattr(self, name) for name in self.recurrent]
        if not (train and self.dropconnect):
            return [d.W for d in denses]
        if self.keep is None:
            u = self.buffer("uniform", (sum(d.W.size for d in denses),), np.float32)
            self.rng.random(out=u, dtype=np.float32)
            start, self.keep = 0, []
            for name, d in zip(self.recurrent, denses):
                keep = self.buffer(f"keep {name}", d.W.shape)
                np.greater_equal(u[start:start + d.W.size].reshape(d.W.shape), np.float32(self.dropconnect), out=keep)
                keep *= 1 / (1 - self.dropconnect)
                self.keep.append(keep)
                start += d.W.size
        return [np.multiply(d.W, m, out=self.buffer(f"dropconnect {name}", d.W.shape))
                for name, d, m in zip(self.recurrent, denses, self.keep)]

    def accumulate(self, dense, x, dz):
        """dense.accumulate(x, dz) for a recurrent Dense, its gradient masked by this update's
        M/(1-p) when the steps ran on the masked weights."""
        if self.keep is None or not self.dropconnect:
            dense.accumulate(x, dz)
        else:
            dense.accumulate(x, dz, self.keep[[getattr(self, name) for name in self.recurrent].index(dense)])

    def fresh_state(self, streams):
        return [np.zeros((streams, self.outputs), self.dtype) for _ in self.state_names]

    def transposed(self, name, W, scale=None):
        """Wᵀ with row j scaled by scale[j] (if given), in C order (BLAS's faster left operand for
        the step loops' products), in the buffer `name`."""
        out = transpose_into(self.buffer(name, W.shape[::-1]), W)
        if scale is not None:
            out *= scale[:, None]
        return out

    def project_steps(self, dense, x, bias, scale, train, keep=None):
        """The input projections of all steps, (x U + bias) scaled per column by `scale` (powers of
        two, so the scaling is exact and may apply to the sum or to its terms), laid out for a
        feature-major step loop: (T, k, S). One-hot ids gather rows of U (with the bias added)
        straight into that layout (kernels.onehot_project). Float rows take one matmul into
        (k, T*S), then kernels.to_steps copies its S-long blocks into place adding the bias (one
        pass, on the loops' threads; faster than transposing element by element). In training with
        `dense.bf16` the float rows' product is in bf16 (`mixed`).
        With batchnorm `normalize` applies the sub-layer's bias and `bias` is not used (and in
        training appends what its backward needs to `keep`)."""
        T, S = x.shape[:2]
        k = scale.size
        out = self.buffer("XU", (T, k, S))
        if dense.bn:
            z = dense.normalize(dense.matmul(rows(x), train=train).reshape(T, S, k), train, keep) * scale
            transpose_into(out, z)
        elif x.dtype.kind in "iu":
            V = dense.W.shape[0]
            table = self.buffer("table", (V, k + ROW_PAD))
            np.multiply(dense.W, scale, out=table[:, :k])
            table[:, :k] += bias * scale
            kernels.get("onehot_project", out, table)(out, table, x.astype(np.int64, copy=False))
        else:
            U = np.multiply(dense.W, scale, out=self.buffer("U", dense.W.shape))
            F = self.buffer("F", (k, T * S))
            if train and dense.bf16:
                mixed(F, U.T, rows(x).T, self.buffer)
            else:
                np.matmul(U.T, rows(x).T, out=F)
            b = bias * scale
            kernels.get("to_steps", out, F, b)(out, F, b)
        return out

    def zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def params(self, updates=False):
        out = {}
        for d in self.denses:
            out.update(d.params(updates))
        return out


def transpose_into(out, x):
    """out = x with its last two axes swapped (kernels.transpose); returns out."""
    kernels.get("transpose", out, x)(out, x)
    return out


def c_order(x, spare, name):
    """(a, transposed): x as a C-contiguous array a, or as the transpose of one (transposed=True),
    which kernels.matmul_bf16 reads in place; copied into the work array spare(name, shape) only
    when x is neither (a column slice of the step loops' deltas)."""
    if x.flags.c_contiguous:
        return x, False
    if x.T.flags.c_contiguous:
        return x.T, True
    a = spare(name, x.shape)
    np.copyto(a, x)
    return a, False


def mixed(out, x, y, spare, beta=0):
    """out (M, N) = beta·out + bf16(x) @ bf16(y), summed in float32, for x (M, K), y (K, N) as
    views of any layout: `[net] precision=bf16`'s product (kernels.matmul_bf16). `spare`: the
    caller's Buffers.buffer, for an operand that must be copied. Returns out."""
    a, ta = c_order(x, spare, "bf16 x")
    b, tb = c_order(y, spare, "bf16 y")
    kernels.get("matmul_bf16", out, a, b)(out, a, b, ta, tb, beta)
    return out


def times(W, b=None):
    """(x, out) -> x W (+ b) written into out, for x (S, K) of any S rows: the steppers' product,
    batch-invariant, so that a stream's result is the same bits alone or beside any others, however
    many (serve's continuous batching and `generate` then agree byte for byte). Each element is
    b + Σ_k x[r, k] W[k, c] summed in one fixed order: the panel kernel on W packed once when it is
    compiled (one FMA per k, in k order, whatever the rows), else one GEMV per row through fixed
    buffers (a W of GEMV_TRANSPOSED_FROM entries or more as its transpose in rows: OpenBLAS's GEMV
    runs that form faster). x may also be a feature-major state (x.T contiguous)."""
    bias = np.zeros(W.shape[1], W.dtype) if b is None else np.asarray(b, W.dtype)
    if kernels.compiled("panel_matmul"):
        Wp = kernels.pack_panels(W)

        def panel(x, out):
            if x.flags.c_contiguous:
                kernels.get("panel_matmul", out, x, Wp, bias)(out, x, Wp, bias)
            else:
                kernels.get("panel_matmul_t", out, x.T, Wp, bias)(out, x.T, Wp, bias)
            return out
        panel.packed = Wp, bias  # what the one-stream loop's product reads (`matvec`)
        return panel
    xr, yr = np.empty(W.shape[0], W.dtype), np.empty(W.shape[1], W.dtype)
    WT = np.ascontiguousarray(W.T) if W.size >= GEMV_TRANSPOSED_FROM else None

    def per_row(x, out):
        for r in range(x.shape[0]):
            np.copyto(xr, x[r])
            if WT is None:
                np.matmul(xr, W, out=yr)
            else:
                np.matmul(WT, xr, out=yr)
            if b is None:
                out[r] = yr
            else:
                np.add(yr, bias, out=out[r])
        return out
    return per_row


def packed_product(A, S):
    """(x, out) -> out = A x for few streams, A (m, K) float32, x (K, S), out (m, S): Aᵀ packed once
    into kernels.pack_panels's panels, x's S columns through kernels.panel_matmul_t as rows, then
    transposed into out. sgemm repacks A on every call at these shapes; the panels stream the
    packed copy (faster below 32 streams). An x or out that is not
    C-contiguous (batchnorm's transposed deltas) takes np.matmul."""
    m = A.shape[0]
    Ap, zeros, xrows = kernels.pack_panels(A.T), np.zeros(m, A.dtype), np.empty((S, m), A.dtype)
    panel, transpose = kernels.get("panel_matmul_t", xrows, Ap, zeros), kernels.get("transpose", xrows)

    def product(x, out):
        if not (x.flags.c_contiguous and out.flags.c_contiguous):
            return np.matmul(A, x, out=out)
        panel(xrows, x, Ap, zeros)
        transpose(out, xrows)
        return out
    return product


def step_product(A, S):
    """(x, out) -> out = A x: a feature-major training loop's per-step product, A (m, K) fixed for
    the loop, x (K, S), out (m, S). On one thread for PANEL_FROM_STREAMS to 32 streams with the
    panel kernel compiled, packed_product: on one thread sgemm runs slower at these shapes. So does
    it from 2 streams for a large A (BIG_STEP_MATRIX entries or more). With more threads OpenBLAS
    shares the work and this is np.matmul, as for float64."""
    fewest = PANEL_FROM_STREAMS[A.size >= BIG_STEP_MATRIX]
    if A.dtype != np.float32 or kernels.threads() != 1 or not fewest <= S <= kernels.PANEL \
            or not kernels.compiled("panel_matmul"):
        def matmul(x, out):
            return np.matmul(A, x, out=out)
        return matmul
    return packed_product(A, S)


def loop_product(A, S, bf16):
    """(x, out) -> out = A x, a training loop's per-step product (step_product); with bf16 the mixed
    precision one of `[net] precision=bf16`, bf16(A) bf16(x) summed in float32 (kernels.matmul_bf16)."""
    if not bf16:
        return step_product(A, S)

    def product(x, out):
        kernels.matmul_bf16(out, A, x, False, False, 0)
        return out
    return product


def bf16_flag(dense, train, loop):
    """(1,), the trailing bf16 argument of a training loop (lstm_loop, gru_loop and their ways back)
    whose products go bf16 (`[net] precision=bf16` sets dense.bf16), when `loop` takes it: numpy's
    reference, or the C loop where the module has AMX (_kernels.amx); else () and float32
    products (inference and the steppers always)."""
    return (1,) if train and dense.bf16 and (loop in kernels.NUMPY.ops.values() or kernels.compiled("matmul_bf16")) else ()


def projector(W, b, ids_input, out):
    """x -> x W + b written into `out`, for the step functions: a row gather from a table that
    already holds b when x is one-hot ids, else `times` with the bias (batch-invariant either way).
    Its `loop(x)`: the same as ops of the one-stream loop (`matvec`), x the input's array."""
    if ids_input:
        table = W + b

        def gather(x):
            return np.take(table, x, axis=0, out=out)
        gather.loop = lambda x: [("gather", table, out)]
        return gather
    product = times(W, b)

    def project(x):
        return product(x, out)
    project.loop = lambda x: [matvec(product, x, out)]
    return project


def matvec(product, x, out):
    """The one-stream loop's op (darknetpy/_sample.h) for `product(x, out)`, a `times` product on
    one row: the same sums on the same packed weights. None without them (no panel kernel)."""
    packed = getattr(product, "packed", None)
    return None if packed is None else ("matvec", x, *packed, out)


def row_product(W, exact):
    """(x, out) -> out = x W, for a stepper's rows x (S, K): `times` (batch-invariant) when exact or
    when the panel kernel is compiled (then as fast as sgemm or faster at any rows), else one
    matmul (BLAS, much faster for many streams than `times`' GEMV per row)."""
    if exact or kernels.compiled("panel_matmul"):
        return times(W)
    return lambda x, out: np.matmul(x, W, out=out)


def halves(n, count):
    """Column factors 0.5 for the first `count` of n columns, 1 for the rest. A logistic gate whose
    weights and bias are pre-halved is (1 + tanh(z)) / 2 with no z/2 at run time (halving is exact);
    numpy's float32 tanh is faster than its exp, and this form cannot overflow."""
    return np.where(np.arange(n) < count, 0.5, 1.0).astype(np.float32)


def rows(x):
    """(T, S, F) -> (T*S, F); indices (T, S) -> (T*S,)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
