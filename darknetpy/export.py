"""`darknetpy export`: a network at inference as an ONNX model (DESIGN.md, "`darknetpy export`").

Each layer kind writes its own part of the graph in `Layer.to_onnx(g, x)`, the last method of its
class, beside its maths: x is the name of the layer's input value and it returns its output's. They
write through `Graph`, the small builder below, which holds what every kind shares: constants,
x W + b (a row gather for ids), the activations, the carried state's slices, the time axis, and
`scan` (a per-step recurrence: plain ops in the step graph, an ONNX Scan in the sequence graph).

Values are position-wise: (streams, F) in the step graph, (steps, streams, F) in the sequence
graph, so MatMul, Add and the activations serve both. ONNX's LSTM and GRU take (steps, streams, F)
in both: the step graph runs them for one step. The graph is built with onnx.helper; this is the
only module that imports onnx, and only when an export runs, so darknetpy works without the extra.
"""
import numpy as np

from . import atomic
from .checkpoint import find_vocab
from .errors import DarknetpyError

OPSET = 17        # ONNX's opset: LSTM, GRU, Scan, Softmax(axis=-1); onnxruntime supports it since 1.11
IR_VERSION = 8    # the IR that opset 17 came with, for runtimes older than this onnx package


def _onnx():
    """The onnx package, or one line saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise DarknetpyError('export needs the onnx package: pip install "darknetpy[onnx]"') from None
    return onnx


# Darknet's activations (activations.py) in ONNX ops: name -> (g, x) -> y.
ACTIVATIONS = {
    "logistic": lambda g, x: g.op("Sigmoid", x),
    "loggy": lambda g, x: g.op("Sub", g.op("Mul", g.op("Sigmoid", x), g.scalar(2)), g.scalar(1)),
    "relu": lambda g, x: g.op("Relu", x),
    "elu": lambda g, x: g.op("Elu", x, alpha=1.0),
    "selu": lambda g, x: g.op("Selu", x, alpha=1.6732, gamma=1.0507),
    "relie": lambda g, x: g.op("LeakyRelu", x, alpha=0.01),
    # x < -4: 0.01 (x + 4);  x > 4: 0.01 (x - 4) + 1;  else 0.125 x + 0.5
    "plse": lambda g, x: g.op("Where", g.op("Less", x, g.scalar(-4)), g.op("Mul", g.op("Add", x, g.scalar(4)), g.scalar(0.01)),
                              g.op("Where", g.op("Greater", x, g.scalar(4)),
                                   g.op("Add", g.op("Mul", g.op("Sub", x, g.scalar(4)), g.scalar(0.01)), g.scalar(1)),
                                   g.op("Add", g.op("Mul", x, g.scalar(0.125)), g.scalar(0.5)))),
    "hardtan": lambda g, x: g.op("Clip", x, g.scalar(-1), g.scalar(1)),
    # x < 0: 0.001 x;  x > 1: 0.001 (x - 1) + 1;  else x
    "lhtan": lambda g, x: g.op("Where", g.op("Less", x, g.scalar(0)), g.op("Mul", x, g.scalar(0.001)),
                               g.op("Where", g.op("Greater", x, g.scalar(1)),
                                    g.op("Add", g.op("Mul", g.op("Sub", x, g.scalar(1)), g.scalar(0.001)), g.scalar(1)), x)),
    "linear": lambda g, x: x,
    "ramp": lambda g, x: g.op("Add", g.op("Relu", x), g.op("Mul", x, g.scalar(0.1))),
    "leaky": lambda g, x: g.op("LeakyRelu", x, alpha=0.1),
    "tanh": lambda g, x: g.op("Tanh", x),
    "stair": lambda g, x: _stair(g, x),
}


def _stair(g, x):
    """n = ⌊x⌋, half = ⌊x/2⌋: half where n is even (n = 2·half, exact in floats), else x - n + half."""
    n, half = g.op("Floor", x), g.op("Floor", g.op("Div", x, g.scalar(2)))
    even = g.op("Equal", n, g.op("Mul", half, g.scalar(2)))
    return g.op("Where", even, half, g.op("Add", g.op("Sub", x, n), half))


class Graph:
    """The graph under construction, handed to each layer's `to_onnx`. A Scan's body is a Graph
    too (`parent` set): its nodes are its own, its constants go to the outermost graph, which the
    body reads from its outer scope."""

    def __init__(self, sequence, inputs, parent=None):
        self.onnx = _onnx()
        self.sequence, self.inputs = sequence, inputs
        self.root = parent.root if parent else self
        self.nodes = []
        if parent is None:
            self.initializers, self.scalars, self.count = [], {}, 0
            self.ids = {"ids"}          # values holding ids (a one-hot input not yet made floats)
            self.carried, self.layout, self.offset = [], [], 0
            self.section = None         # the cfg section being written, for `refuse`
            self.default_temperature = None

    # ---- names, ops, constants ---------------------------------------------------------------
    def name(self, hint):
        self.root.count += 1
        return f"{hint}_{self.root.count}"

    def op(self, op_type, *inputs, outputs=1, **attrs):
        """One node; its output's name, or a tuple of `outputs` names."""
        names = [self.name(op_type) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=self.name(op_type + "_node"),
                                                     **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def const(self, array, hint="w"):
        """An initializer holding `array` (float32, or int64 for integers)."""
        array = np.asarray(array)
        array = np.ascontiguousarray(array, np.int64 if array.dtype.kind in "iub" else np.float32)
        name = self.name(hint)
        self.root.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def scalar(self, value):
        """A float32 scalar constant, one initializer per value."""
        table = self.root.scalars
        if value not in table:
            table[value] = self.const(np.float32(value), "c")
        return table[value]

    def refuse(self, message, key=None):
        """The error for what ONNX cannot express, at the cfg line of `key` (or of the section)."""
        return self.root.section.error(f"cannot export to ONNX: {message}", key)

    # ---- what the layers share ----------------------------------------------------------------
    def floats(self, x):
        """x as float rows: ids become one-hot rows over the network's inputs."""
        if x not in self.root.ids:
            return x
        return self.op("OneHot", x, self.const(np.array([self.inputs])), self.const(np.array([0, 1], np.float32)),
                       axis=-1)

    def dense(self, x, W, b):
        """x W + b, W (in, out), b (out,): for ids a gather of the rows of W + b (as the steppers)."""
        if x in self.root.ids:
            return self.op("Gather", self.const(W + b), x, axis=0)
        return self.op("Add", self.op("MatMul", x, self.const(W)), self.const(b))

    def act(self, name, x):
        """Darknet's activation `name` of x."""
        return ACTIVATIONS[name](self, x)

    def state(self, kind, *sizes):
        """The layer's slices of the carried state, (streams, size) each, in DESIGN.md's order; the
        layer hands their next values to `set_state`."""
        root, out = self.root, []
        root.layout.append(f"{kind}:{sum(sizes)}")
        for size in sizes:
            out.append(self.op("Slice", "state", self.const([root.offset]), self.const([root.offset + size]),
                               self.const([1])))
            root.offset += size
        return out

    def set_state(self, *values):
        self.root.carried.extend(values)

    def temperature(self, t):
        """The graph's `temperature` input, whose initializer is the cfg's softmax temperature: one
        for the whole model, as `--temp` sets every [softmax]'s."""
        root = self.root
        if root.default_temperature is None:
            root.default_temperature = t
        elif root.default_temperature != t:
            raise self.refuse(f"temperature={t:g} differs from an earlier [softmax]'s {root.default_temperature:g}, "
                              "and the model has one temperature input; give every [softmax] the same", "temperature")
        return "temperature"

    def last_axis(self, x, shape):
        """x with its last axis reshaped to `shape` (a tuple), the others kept."""
        keep = [0] * (2 if self.sequence else 1)
        return self.op("Reshape", x, self.const(keep + list(shape)))

    # ---- time ----------------------------------------------------------------------------------
    def recurrent_op(self, op_type, x, W, R, B, initial, P=None, **attrs):
        """ONNX's LSTM or GRU over x's steps (one step in the step graph), one direction, given W, R,
        B (and P) without their direction axis and the initial states (streams, n) each:
        (the outputs h, the final states)."""
        X = self.floats(x) if self.sequence else self.op("Unsqueeze", self.floats(x), self.const([0]))
        axis0 = self.const([0])
        inputs = [X, self.const(W[None]), self.const(R[None]), self.const(B[None]), "",
                  *(self.op("Unsqueeze", s, axis0) for s in initial)]
        if P is not None:
            inputs.append(self.const(P[None]))
        Y, *finals = self.op(op_type, *inputs, outputs=1 + len(initial), hidden_size=R.shape[1], **attrs)
        Y = self.op("Squeeze", Y, self.const([1] if self.sequence else [0, 1]))  # (steps, 1, streams, n)
        return Y, [self.op("Squeeze", s, axis0) for s in finals]

    def scan(self, step, sequences, states):
        """A recurrence over the steps: `step(g, xs, states) -> (new states, outputs)` writes one
        step's maths into g, for xs (streams, ·) one step of each of `sequences` and states
        (streams, ·). The step graph runs it once, on its values; the sequence graph runs it as the
        body of an ONNX Scan. Returns (final states, outputs over the steps)."""
        if not self.sequence:
            return step(self, list(sequences), list(states))
        helper, FLOAT = self.onnx.helper, self.onnx.TensorProto.FLOAT
        body = Graph(False, self.inputs, parent=self)
        carried = [self.name("carried") for _ in states]
        xs = [self.name("x_t") for _ in sequences]
        new, outs = step(body, xs, carried)
        results = [body.op("Identity", v) for v in list(new) + list(outs)]
        graph = helper.make_graph(body.nodes, self.name("step"),
                                  [helper.make_tensor_value_info(v, FLOAT, None) for v in carried + xs],
                                  [helper.make_tensor_value_info(v, FLOAT, None) for v in results])
        finals = self.op("Scan", *states, *sequences, outputs=len(results), body=graph,
                         num_scan_inputs=len(sequences))
        finals = finals if isinstance(finals, tuple) else (finals,)
        return list(finals[:len(states)]), list(finals[len(states):])


# ---- the model ---------------------------------------------------------------------------------
def build(net, sequence=False, metadata=None):
    """The ONNX ModelProto of `net` at inference: the step graph, or with `sequence` the sequence
    graph (DESIGN.md's contract), its metadata_props from `metadata` plus the state's size and layout."""
    onnx = _onnx()
    helper, FLOAT, INT64 = onnx.helper, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    g = Graph(sequence, net.inputs)
    x = "ids"
    for layer, section in zip(net.layers, net.sections):
        g.section = section
        x = layer.to_onnx(g, x)
    g.nodes.append(helper.make_node("Identity", [g.floats(x)], ["probs"]))
    if g.carried:
        g.nodes.append(helper.make_node("Concat", g.carried, ["state_out"], axis=1))
    else:
        g.nodes.append(helper.make_node("Identity", ["state"], ["state_out"]))
    S = g.offset
    t = g.default_temperature or 1.0
    g.initializers.append(onnx.numpy_helper.from_array(np.array(t, np.float32), "temperature"))
    steps = ["steps", "streams"] if sequence else ["streams"]
    graph = helper.make_graph(
        g.nodes, "darknetpy",
        [helper.make_tensor_value_info("ids", INT64, steps),
         helper.make_tensor_value_info("state", FLOAT, ["streams", S]),
         helper.make_tensor_value_info("temperature", FLOAT, [])],
        [helper.make_tensor_value_info("probs", FLOAT, steps + [net.outputs]),
         helper.make_tensor_value_info("state_out", FLOAT, ["streams", S])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="darknetpy",
                              producer_version=_version())
    model.ir_version = IR_VERSION
    props = {"darknetpy.state_size": str(S), "darknetpy.state_layout": ",".join(g.layout),
             "darknetpy.version": _version(), **(metadata or {})}
    helper.set_model_props(model, props)
    return model


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("darknetpy")
    except PackageNotFoundError:
        return "unknown"


def export(cfg_path, weights_path, output, sequence=False, vocab=None):
    """Write `output`, the ONNX model of CFG with WEIGHTS (batch and time_steps forced to 1), the
    vocabulary (`vocab`, else the one beside the weights, as generate finds it) in its metadata.
    Returns the ModelProto."""
    from .checkpoint import load_network
    onnx = _onnx()
    net = load_network(cfg_path, weights_path, batch=1, time_steps=1)
    vocabulary = find_vocab(cfg_path, weights_path, vocab, net)
    with open(cfg_path, encoding="utf-8") as f:  # the cfg was read as UTF-8 already
        metadata = {"darknetpy.cfg": f.read()}
    if vocabulary is not None:
        metadata["darknetpy.vocab"] = vocabulary.to_text()
    size = sum(v.nbytes for v in net.params().values())
    if size >= 2 ** 31 - 2 ** 24:
        raise DarknetpyError(f"the weights take {size} bytes; an ONNX file holds under 2 GB (protobuf's limit)",
                             weights_path)
    model = build(net, sequence, metadata)
    onnx.checker.check_model(model, full_check=True)
    try:
        atomic.write(output, model.SerializeToString())
    except OSError as e:
        raise DarknetpyError(f"cannot write the model ({e.strerror or e}); check the folder exists and is "
                             "writable", output) from None
    return model
