"""A Darknet network built from a .cfg: the layer stack, its state, forward, backward and updates.

Arrays are time-major (steps, streams, features), float32. One `train_step` is Darknet's
train_network_datum: seen += streams*steps, forward, backward, and an update once every
`subdivisions` datums.
"""

import numpy as np

from . import cfg as cfgmod
from . import optim, weights
from .errors import DarknetpyError
from .layers import KINDS
from .layers.connected import is_ids

# [net] keys Darknet reads for image networks; accepted quietly so Darknet cfgs load without noise.
IMAGE_KEYS = ("height", "width", "channels", "max_crop", "min_crop", "max_ratio", "min_ratio",
              "center", "angle", "aspect", "saturation", "exposure", "hue", "random", "notruth")


class Network:
    def __init__(self, cfg_path, batch=None, time_steps=None, seed=None, dtype=np.float32):
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
        momentum, decay, clip = net.float("momentum", 0.9), net.float("decay", 0.0001), net.float("clip", 0.0)
        if net.int("adam", 0):
            self.optimizer = optim.Adam(B1=net.float("B1", 0.9), B2=net.float("B2", 0.999),
                                        eps=net.float("eps", 1e-7), decay=decay, clip=clip)
        else:
            self.optimizer = optim.SGD(momentum=momentum, decay=decay, clip=clip)
        if self.optimizer.clip < 0:
            raise net.error("clip must be >= 0", "clip")
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.last_rate = None  # the rate of the most recent update
        # MPI hook (darknetpy/parallel.py): K ranks each run streams/K of the streams, and
        # `reduce(slots)` sums the gradients over the ranks before each update.
        self.ranks, self.reduce = 1, None

        self.layers, self.sections = [], sections[1:]
        inputs = self.inputs
        for section in self.sections:
            layer = KINDS[section.type](section, inputs, self.rng)
            self.layers.append(layer)
            inputs = layer.outputs
        self.outputs = inputs
        self.dtype = np.dtype(dtype)
        if self.dtype != np.float32:  # float64 serves the finite-difference gradient checks
            for layer in self.layers:
                layer.astype(self.dtype)
        for section in sections:
            section.warn_unused()
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

    def set_temperature(self, t):
        """Every softmax's temperature (generation replaces the cfg's, as Darknet's -temp does)."""
        for layer in self.layers:
            layer.set_temperature(t)

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

    def forward(self, x, train=False):
        """Run (steps, streams[, inputs]) through every layer; the state carries over. Returns the last output."""
        if is_ids(x):
            self._checked(x)
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def predict_ids(self, ids):
        """One time step for `streams` one-hot inputs given as ids (streams,): -> (streams, outputs)."""
        ids = np.asarray(ids)
        return self.forward(ids.reshape(1, -1), train=False)[0]

    def stepper(self, streams=1):
        """A fast `predict_ids` for generation and validation: ids (streams,) -> probabilities
        (streams, outputs), one step, stateful. Each layer prepares its weights once (batchnorm
        folded, biases combined, one-hot inputs as a table), so a character costs a few GEMVs and
        few numpy calls. It keeps copies: after changing the weights, make a new one."""
        steps, ids = [], True
        for layer in self.layers:
            steps.append(layer.stepper(streams, ids))
            ids = ids and not layer.denses

        def step(ids):
            x = np.asarray(ids)
            for s in steps:
                x = s(x)
            return x
        return step

    def predict(self, x):
        """One time step: x is (inputs,) or (streams, inputs) float32; stateful; returns probabilities."""
        x = np.asarray(x, self.dtype)
        out = self.forward(self._as_input(x.reshape(1, -1, x.shape[-1])), train=False)[0]
        return out[0] if x.ndim == 1 else out

    def train_step(self, x, y):
        """One datum (Darknet's train_network_datum): x, y are (time_steps, streams, inputs) float32
        (or (time_steps, streams) integer ids). Returns Darknet's cost: Σ -ln p over the datum."""
        if self.loss_layer is None:
            raise DarknetpyError(f"{self.cfg_path}: the network has no [softmax] or [cost] layer to train against")
        x = self._as_input(x)
        y = y if is_ids(y) else np.asarray(y, self.dtype)
        streams = self.streams // self.ranks  # MPI hook: this rank's block of the streams
        if x.shape[:2] != (self.time_steps, streams) or y.shape[:2] != x.shape[:2]:
            raise DarknetpyError(f"train_step takes (time_steps, streams) = ({self.time_steps}, {streams}) "
                                 f"rows, got x {x.shape[:2]} and y {y.shape[:2]}")
        for layer, section in zip(self.layers, self.sections):
            # batchnorm's variance has an n-1 divisor: it needs 2 rows to normalize over
            rows = streams if layer.bn_over == "streams" else streams * self.time_steps
            if rows < 2 and any(d.bn for d in layer.denses):
                raise DarknetpyError(f"training [{section.type}] with batch_normalize needs at least 2 "
                                     f"{layer.bn_over} per datum; raise batch (or lower subdivisions)",
                                     section.path, section.line)
        self.seen += self.streams * self.time_steps
        cost = self.accumulate(x, y)
        if (self.seen // (self.streams * self.time_steps)) % self.subdivisions == 0:
            self.update()
        return cost

    def accumulate(self, x, y):
        """Forward and backward one datum in training mode, adding its negative gradients to the
        update buffers (see `updates()`); no update, `seen` untouched. Returns the cost."""
        out = x
        for layer in self.layers[:self.loss_layer + 1]:
            out = layer.forward(out, True)
        cost, delta = self.layers[self.loss_layer].loss(out, y)
        for i in range(self.loss_layer, -1, -1):
            delta = self.layers[i].backward(delta, need_dx=i > 0)
        return cost

    def update(self):
        n = self.batch_num
        lr = optim.learning_rate(self.hp, n, self.rng)
        slots = self.slots()
        if self.reduce is not None:  # MPI hook: sum the ranks' gradients, then the same update on each
            self.reduce(slots)
        self.optimizer.step(slots, lr, self.batch * self.time_steps)
        if self.reduce is not None:
            self.reduce.after_step(self, slots)
        self.last_rate = lr

    def learning_rate(self):
        """The rate the next update would use (Darknet's get_current_rate)."""
        return optim.learning_rate(self.hp, self.batch_num, self.rng)

    def slots(self):
        return [s for layer in self.layers for s in layer.slots()]

    def reset_state(self, stream=None):
        for layer in self.layers:
            layer.reset_state(stream)

    # ---- parameters ----------------------------------------------------------------------------
    def params(self, updates=False):
        """Every parameter as a Darknet-shaped view, keyed 'layer{i}.[sub.]name', in save order.
        updates=True gives the accumulated negative gradients of the trainable ones instead."""
        return {f"layer{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params(updates).items()}

    def save_weights(self, path):
        weights.save(self, path)

    def load_weights(self, path):
        weights.load(self, path)


def load_network(cfg, weights_path=None, batch=None, time_steps=None):
    """Build the network a .cfg describes and, if given, load a Darknet .weights file into it.

    `batch` overrides the streams run at once (subdivisions become 1), `time_steps` the steps per datum.
    Unused cfg keys are reported as `cfg.CfgWarning` warnings, as Darknet prints them.
    """
    net = Network(cfg, batch=batch, time_steps=time_steps)
    if weights_path is not None:
        net.load_weights(weights_path)
    return net


