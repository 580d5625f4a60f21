"""A Darknet network built from a .cfg: the layer stack, its carried state, forward, backward and updates.

Arrays are time-major (steps, streams, features), float32. One `train_step` is Darknet's
train_network_datum: seen += streams*steps, forward, backward, and an update once every
`subdivisions` datums.
"""

import numpy as np

from . import cfg as cfgmod
from . import evaluate, generation, kernels, optim, weights
from .errors import DarknetpyError
from .layers import KINDS
from .layers.connected import is_ids
from .options import SEED, GenerationOptions

# [net] keys Darknet reads for image networks; accepted quietly so Darknet cfgs load without noise.
IMAGE_KEYS = ("height", "width", "channels", "max_crop", "min_crop", "max_ratio", "min_ratio",
              "center", "angle", "aspect", "saturation", "exposure", "hue", "random", "notruth")


class Stepper:
    """The network one step at a time, for `streams` streams, with every layer's weights prepared
    once (Layer.stepper: batchnorm folded, biases combined, a one-hot input as a table row), so a
    character costs a few GEMVs and few numpy calls. `step(x)`: ids (streams,) -> (streams,
    outputs), or float rows (streams, inputs) for a stepper made with ids=False. It holds copies of
    the weights: later changes do not reach it. `states` lists each layer's carried arrays,
    (streams, n) each, updated in place. `loop`: for one stream of ids, the same step in C
    (generation.Loop; None where it does not run), which `__call__` takes."""

    def __init__(self, steps, states, loop=None):
        self.steps, self.states, self.loop = steps, states, loop

    def __call__(self, x):
        if self.loop is not None:
            return self.loop(x)
        for step in self.steps:
            x = step(x)
        return x

    def arrays(self):
        return [a for layer_state in self.states for a in layer_state]

    def reset(self, stream=None):
        """Zero the state of every stream, or of one."""
        for a in self.arrays():
            a[slice(None) if stream is None else stream] = 0

    def select(self, index):
        """Stream j continues from the state stream index[j] had (a beam's reordering)."""
        for a in self.arrays():
            a[...] = a[index]


class Network:
    def __init__(self, cfg_path, batch=None, time_steps=None, seed=None, dtype=np.float32, bf16_reference=False):
        """`bf16_reference`: with `[net] precision=bf16`, run the bf16 products even where no compiled
        matmul_bf16 is in use, on its numpy reference (tests; slow)."""
        sections = cfgmod.parse_cfg(cfg_path, KINDS)
        self.net_section = net = sections[0]  # [net]: errors about its keys point at their lines
        self.cfg_path = str(cfg_path)
        cfg_batch = net.int("batch", 1)
        subdivisions = net.int("subdivisions", 1)
        self.time_steps = net.int("time_steps", 1)
        self.inputs = net.int("inputs")
        for key in IMAGE_KEYS:
            net.str(key, "")
        if cfg_batch < 1:
            raise net.error("batch must be >= 1", "batch")
        if subdivisions < 1 or cfg_batch % subdivisions:
            raise net.error(f"batch={cfg_batch} is not divisible by subdivisions={subdivisions}", "subdivisions")
        if self.time_steps < 1:
            raise net.error("time_steps must be >= 1", "time_steps")
        if self.inputs < 1:
            raise net.error("inputs must be >= 1", "inputs")
        if batch is not None:  # an override runs `batch` streams with no subdivisions
            cfg_batch, subdivisions = int(batch), 1
        if time_steps is not None:
            self.time_steps = int(time_steps)
        self.batch, self.subdivisions = cfg_batch, subdivisions
        self.streams = cfg_batch // subdivisions

        self.hp = optim.read_policy(net)
        adam = net.int("adam", 0)
        weight_decay = net.float("weight_decay", 0.0)  # darknetpy's decoupled decay (optim.AdamW)
        epochs = net.float("weight_decay_epochs", 0.0)  # darknetpy's: the decay grows past it (optim.AdamW)
        momentum, clip = net.float("momentum", 0.9), net.float("clip", 0.0)
        decay = net.float("decay", 0.0 if weight_decay else 0.0001)
        if weight_decay < 0 or (weight_decay and not adam):
            raise net.error("weight_decay (decoupled decay) must be >= 0 and needs adam=1; SGD has Darknet's decay",
                            "weight_decay")
        if epochs < 0 or (epochs and not weight_decay):
            raise net.error("weight_decay_epochs must be >= 0 and needs weight_decay (AdamW)", "weight_decay_epochs")
        if weight_decay and decay:
            raise net.error("weight_decay (decoupled) and decay (Darknet's L2 in the gradient) are both set; "
                            "set decay=0", "decay")
        if adam:
            moments = dict(B1=net.float("B1", 0.9), B2=net.float("B2", 0.999), eps=net.float("eps", 1e-7),
                           decay=decay, clip=clip)
            self.optimizer = optim.AdamW(weight_decay, epochs, **moments) if weight_decay else optim.Adam(**moments)
        else:
            self.optimizer = optim.SGD(momentum=momentum, decay=decay, clip=clip)
        if self.optimizer.clip < 0:
            raise net.error("clip must be >= 0", "clip")
        self.ema_alpha = net.float("ema_alpha", 0.0)  # darknetpy's average of the weights (optim.EMA, kept by train.py)
        if not 0 <= self.ema_alpha < 1:
            raise net.error("ema_alpha must be in [0, 1)", "ema_alpha")
        # darknetpy's: bf16 inputs to training's large products (Dense.bf16), resolved below
        self.precision = net.str("precision", "fp32")
        if self.precision not in ("fp32", "bf16"):
            raise net.error("precision must be fp32 or bf16", "precision")
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.text_chars = 0  # the training text's length in symbols, set by a trainer (0: not known): see update
        self.last_rate = None  # the rate of the most recent update
        self.vocab = None  # what an id is, for generate/score/vec (vocab.Vocab); None: bytes
        self.version = 0   # bumped by every change of the weights through the API (see predict)
        self._predictor = None
        # The recurrent state carried from datum to datum (and from predict to predict), owned here
        # and handed to each layer's forward: "layer{i}.{name}" -> (streams, outputs), made by
        # `carried` (the .state.npz's keys).
        self.states = {}

        self.layers, self.sections = [], sections[1:]
        inputs = self.inputs
        for section in self.sections:
            try:
                layer = KINDS[section.type](section, inputs, self.rng)
            except MemoryError as e:
                raise DarknetpyError(f"[{section.type}] is too large for this machine's memory ({e}); make it "
                                     "smaller", section.path, section.line) from None
            self.layers.append(layer)
            inputs = layer.outputs
        self.outputs = inputs
        self.dtype = np.dtype(dtype)
        if self.dtype != np.float32:  # float64 serves the finite-difference gradient checks
            for layer in self.layers:
                layer.astype(self.dtype)
        # precision=bf16 runs where its product is compiled (AMX-BF16), else in float32: train says so
        self.bf16 = self.precision == "bf16" and self.dtype == np.float32 and \
            (bf16_reference or kernels.compiled("matmul_bf16"))
        for d in self.denses:
            d.bf16 = self.bf16
        cfgmod.check_unused(sections)
        self.loss_layer = self._find_loss_layer()

    def _find_loss_layer(self):
        """Index of the layer whose loss trains the net: the last one whose loss counts anywhere
        ([softmax]), else a last layer whose loss counts only there ([cost])."""
        anywhere = [i for i, layer in enumerate(self.layers) if layer.loss_at == "any"]
        if anywhere:
            return anywhere[-1]
        return len(self.layers) - 1 if self.layers[-1].loss_at == "end" else None

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def denses(self):
        return [d for layer in self.layers for d in layer.denses]

    @property
    def init_rand_draws(self):
        """rand() calls Darknet's construction makes: one per connected (sub)layer weight."""
        return sum(d.W.size for d in self.denses)

    @property
    def batch_num(self):
        """Darknet's get_current_batch: updates so far, counted from `seen`."""
        return self.seen // (self.streams * self.time_steps * self.subdivisions)

    @property
    def precision_label(self):
        """The precision training's large products run in, for reports: fp32, bf16 (on which
        matmul_bf16), or fp32 where precision=bf16 was asked but cannot run here."""
        if self.bf16:
            return "bf16 (" + ("compiled matmul_bf16" if kernels.compiled("matmul_bf16") else "numpy reference") + ")"
        return "fp32" if self.precision == "fp32" else "fp32 (precision=bf16 needs the compiled AMX kernel)"

    def set_temperature(self, t):
        """Every softmax's temperature (generation replaces the cfg's, as Darknet's -temp does)."""
        for layer in self.layers:
            layer.set_temperature(t)
        self.refresh()

    def refresh(self):
        """Make the next `predict` prepare its weights anew: after writing into `params()` arrays."""
        self.version += 1

    # ---- running -----------------------------------------------------------------------------
    def _as_input(self, x):
        """Integer ids pass through; float rows that are exactly one-hot become ids (a row gather
        gives bit-identical sums and skips the first matmul); anything else stays float32."""
        if is_ids(x):
            return self._checked(x)
        x = np.asarray(x, self.dtype)
        if x.shape[-1] != self.inputs:
            raise DarknetpyError(f"input has {x.shape[-1]} features, the network takes {self.inputs}")
        ids = x.argmax(axis=-1)
        if np.array_equal(np.take_along_axis(x, ids[..., None], -1), np.ones(ids.shape + (1,), x.dtype)) \
                and np.count_nonzero(x) == ids.size:
            return ids
        return x

    def _checked(self, ids):
        """Integer ids, after checking their range here: the layers gather with them unchecked."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.inputs):
            raise DarknetpyError(f"input id out of range [0, {self.inputs})")
        return ids

    def carried(self, i, streams):
        """Layer i's carried state arrays for `streams` streams, in `states`; (re)made as zeros
        when missing or for another number of streams."""
        layer = self.layers[i]
        keys = [f"layer{i}.{name}" for name in layer.state_names]
        if any(k not in self.states or self.states[k].shape[0] != streams for k in keys):
            self.states.update(zip(keys, layer.fresh_state(streams)))
        return [self.states[k] for k in keys]

    def forward(self, x, train=False):
        """Run (steps, streams[, inputs]) through every layer; the state carries over. Returns the last output."""
        if is_ids(x):
            self._checked(x)
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, train, self.carried(i, x.shape[1]))
        return x

    def predict_ids(self, ids):
        """One time step for `streams` one-hot inputs given as ids (streams,): -> (streams, outputs),
        through the training forward (the reference the prepared `stepper` must equal)."""
        ids = np.asarray(ids)
        return self.forward(ids.reshape(1, -1), train=False)[0]

    def stepper(self, streams=1, ids=True, private=False, temperature=None, layers=None, invariant=False):
        """A Stepper over the first `layers` layers (default: all), for `streams` streams of ids
        (or float rows: ids=False). It runs on the network's own carried state, or with
        private=True on new zero state, which leaves the network's state and its training alone
        (generation and scoring from a training network). `temperature` sets the softmax
        temperature of this stepper only (default: the layers' own): a number, or an array
        (streams,) float32 of one per stream, read at every step (write into it to change a
        stream's). Every layer runs its row step (the same step op as its training loop) on the
        state it is handed. Each stream's output is the same bits whatever the other streams are and
        however many (its products are layers.base.times, the softmax per row): generation runs
        on such steppers, so a sample is the same alone or batched beside others. Only a private
        stepper of several streams without invariant=True (scoring's chunks) may run plain BLAS
        products instead (layers.base.row_product: where the panel kernel is not compiled)."""
        layers = self.layers[:layers]
        before = [getattr(layer, "temperature", None) for layer in layers]
        exact = invariant or not private or streams == 1
        steps, states, first = [], [], ids
        try:
            for i, layer in enumerate(layers):
                if temperature is not None:
                    layer.set_temperature(temperature)
                states.append(layer.fresh_state(streams) if private else self.carried(i, streams))
                steps.append(layer.stepper(streams, first, states[-1], exact))
                first = first and not layer.denses
        finally:
            for layer, t in zip(layers, before):
                if t is not None:
                    layer.set_temperature(t)
        return Stepper(steps, states, generation.Loop.of(steps) if streams == 1 and ids else None)

    def predict(self, x):
        """One time step, stateful: the network's own state carries over from call to call
        (`reset_state` starts again). x: one-hot float32 (inputs,) or (streams, inputs), or integer
        ids, a scalar or (streams,). Returns the probabilities, (outputs,) for one input, else
        (streams, outputs), as a new array.

        It runs on a prepared Stepper, kept from call to call while `version` stays: load_weights,
        train_step, accumulate, update and set_temperature bump it, so the next call sees their
        change. Writing into the arrays `params()` returns does not: call `refresh()` after."""
        x = np.asarray(x)
        ids = is_ids(x)
        single = x.ndim == (0 if ids else 1)
        if single:
            x = x.reshape(1) if ids else x.reshape(1, -1)
        x = self._as_input(x)
        ids = is_ids(x)  # one-hot float rows became ids
        key = (self.version, x.shape[0], ids)
        cached, live = self._predictor, list(self.states.values())
        if cached is None or cached[0] != key or len(live) != len(cached[1].arrays()) \
                or any(a is not b for a, b in zip(cached[1].arrays(), live)):
            cached = self._predictor = (key, self.stepper(x.shape[0], ids=ids))
        out = cached[1](x)
        return np.array(out[0] if single else out)

    # ---- text: generation and scoring (generation.py, evaluate.py) -----------------------------
    def generate(self, seed=GenerationOptions.seed, *, vocab=None, **options):
        """The bytes `darknetpy generate` prints for the same options: bytes, or a list of
        `samples` of them. `options` are options.GenerationOptions' fields, with its defaults:
        seed, length, temperature, top_k (0: all symbols), top_p (1: no nucleus), greedy, beam
        (0: no search), stop, srand, samples. `seed` and `stop` may be str (UTF-8) or bytes;
        `vocab` (a vocab.Vocab or a .vocab path) defaults to the one `load_network` found beside
        the weights. Runs on a private stepper: the network's state, training and random streams
        are left as they were."""
        return generation.generate(self, GenerationOptions(seed, **options), vocab=vocab)

    def stream(self, seed=GenerationOptions.seed, *, vocab=None, separator=generation.SEPARATOR, **options):
        """`generate` as an iterator of bytes pieces as they are produced, for notebooks and
        servers: joined, the pieces are `darknetpy generate`'s output (with samples > 1, the first
        sample live and each later one after a `separator` line)."""
        return generation.output(self, GenerationOptions(seed, **options), separator, vocab=vocab)

    def score(self, text, seed=SEED, vocab=None):
        """Bits per character of `text` (str as UTF-8, or bytes) after `seed`, fed in order with
        the state carried: the BPC `darknetpy valid` prints (per token for a words vocabulary).
        `vocab` as generate's. The network's own state is left alone."""
        return evaluate.score(self, text, seed, vocab)

    def train_step(self, x, y, streams=None, before_update=None, average=None):
        """One datum (Darknet's train_network_datum): x, y are (time_steps, streams, inputs) float32
        (or (time_steps, streams) integer ids). Returns Darknet's cost: Σ -ln p over the datum.

        `streams` (a slice of range(self.streams), default all) is the block of the datum's streams
        x and y hold: a data-parallel run gives each process its block (parallel.py), and `seen`
        still counts every stream. `before_update(slots)` runs on the accumulated gradients just
        before an update (where a data-parallel run sums them). `average`: the run's optim.EMA, moved
        after an update (in the optimizer's pass where it can)."""
        if self.loss_layer is None:
            raise DarknetpyError(f"{self.cfg_path}: the network has no [softmax] or [cost] layer to train against")
        x = self._as_input(x)
        y = y if is_ids(y) else np.asarray(y, self.dtype)
        block = range(self.streams)[streams or slice(None)]
        if x.shape[:2] != (self.time_steps, len(block)) or y.shape[:2] != x.shape[:2]:
            raise DarknetpyError(f"train_step takes (time_steps, streams) = ({self.time_steps}, {len(block)}) "
                                 f"rows, got x {x.shape[:2]} and y {y.shape[:2]}")
        self.check_batchnorm(len(block))
        self.seen += self.streams * self.time_steps
        cost = self.accumulate(x, y, (block.start, self.streams))
        if (self.seen // (self.streams * self.time_steps)) % self.subdivisions == 0:
            self.update(before_update, average)
        return cost

    def check_batchnorm(self, streams, where="", fix="raise batch (or lower subdivisions)"):
        """Refuse to train batchnorm on fewer than 2 rows (its variance has an n-1 divisor): a
        recurrent layer normalizes each step over the `streams` of a datum (`where` and `fix`
        word the error for a caller that splits the streams)."""
        for layer, section in zip(self.layers, self.sections):
            rows = streams if layer.bn_over == "streams" else streams * self.time_steps
            if rows < 2 and any(d.bn for d in layer.denses):
                raise DarknetpyError(f"training [{section.type}] with batch_normalize needs at least 2 "
                                     f"{layer.bn_over} per datum{where}; {fix}", section.path, section.line)

    def accumulate(self, x, y, block=None):
        """Forward and backward one datum in training mode, adding its negative gradients to the
        update buffers (see `updates()`); no update, `seen` untouched. Returns the cost. `block`:
        (offset, total), the datum's streams are those from `offset` of `total` (layers that draw
        random masks draw them for all `total` and keep these); default all of them."""
        out = x
        block = block or (0, np.shape(x)[1])
        for i, layer in enumerate(self.layers[:self.loss_layer]):
            state = self.carried(i, np.shape(out)[1])
            out = layer.forward(out, True, state, block) if layer.draws_masks else layer.forward(out, True, state)
        self.version += 1  # batchnorm's rolling statistics move even before the update
        cost, delta = self.layers[self.loss_layer].train_loss(out, y)  # its forward and loss (one op for [softmax])
        for i in range(self.loss_layer, -1, -1):
            delta = self.layers[i].backward(delta, need_dx=i > 0)
        return cost

    def update(self, before_step=None, average=None):
        """The optimizer's step on the accumulated gradients; `before_step(slots)` runs on them first.
        `average` (an optim.EMA) then moves towards the new weights: Adam moves its slots' averages
        in its own pass, the EMA the rest."""
        n = self.batch_num
        lr = optim.learning_rate(self.hp, n, self.rng)
        slots = self.slots()
        if before_step is not None:
            before_step(slots)
        moves = average.moves(self, n) if average is not None else {}
        B = self.batch * self.time_steps  # chars an update reads
        # the passes over the training text that the schedule plans (AdamW's weight_decay_epochs)
        planned = self.hp["max_batches"] * B / self.text_chars if self.text_chars else 0.0
        moved = self.optimizer.step(slots, lr, B, moves, planned)
        if average is not None:
            average.update(self, n, moved)
        for layer in self.layers:
            layer.next_update()
        self.last_rate = lr
        self.version += 1

    def learning_rate(self):
        """The rate the next update would use (Darknet's get_current_rate)."""
        return optim.learning_rate(self.hp, self.batch_num, self.rng)

    def slots(self):
        return [s for layer in self.layers for s in layer.slots()]

    def reset_state(self, stream=None):
        """Zero the carried state of every stream, or of one."""
        for a in self.states.values():
            a[slice(None) if stream is None else stream] = 0

    # ---- parameters ----------------------------------------------------------------------------
    def params(self, updates=False):
        """Every parameter as a Darknet-shaped view, keyed 'layer{i}.[sub.]name', in save order.
        updates=True gives the accumulated negative gradients of the trainable ones instead."""
        return {f"layer{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params(updates).items()}

    def save_weights(self, path):
        weights.save(self, path)

    def load_weights(self, path):
        weights.load(self, path)
        self.version += 1
