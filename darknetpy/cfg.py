"""Darknet .cfg reader: sections with file:line, typed getters, unused-option warnings, typo errors.

Grammar (Darknet's read_cfg): every line first loses ALL spaces and tabs; empty lines and lines
starting with '#' or ';' are ignored; '[type]' opens a section; every other line is 'key=value'.

An unused key is Darknet's "Unused field" warning (cfgs carry keys for other tools), unless it is a
near miss of a key its section asked for (`outptu` for `output`): then it is an error at its line,
because Darknet would silently train another network.
"""
import warnings

from .errors import DarknetpyError

# Darknet layer types that exist but are not recurrent-side layers; named so the error can say so.
OTHER_DARKNET = {"shortcut", "crop", "detection", "region", "yolo", "local", "conv", "convolutional",
                 "deconv", "deconvolutional", "activation", "logistic", "l2norm", "crnn", "max",
                 "maxpool", "reorg", "avg", "avgpool", "lrn", "normalization", "batchnorm", "route",
                 "upsample", "iseg"}
REQUIRED = object()

# Keys the C Darknets' parser.c reads (pjreddie's and AlexeyAB's), some of which darknetpy leaves
# unasked (policy- or adam-only keys, keys of image nets and of Darknet's tools): a real Darknet key
# is never called a typo of another (AlexeyAB's `flip` is one edit from `clip`).
DARKNET_KEYS = {
    "net": {"B1", "B2", "adam", "adversarial_lr", "angle", "aspect", "attention", "augment_speed",
            "badlabels_rejection_percentage", "batch", "blur", "burn_in", "center", "channels", "clip",
            "contrastive", "contrastive_color", "contrastive_jit_flip", "cutmix", "decay",
            "dynamic_minibatch", "ema_alpha", "eps", "equidistant_point", "exposure", "flip", "gamma",
            "gaussian_noise", "height", "hue", "inputs", "label_smooth_eps", "learning_rate",
            "learning_rate_min", "letter_box", "loss_scale", "max_batches", "max_chart_loss",
            "max_crop", "max_ratio", "min_crop", "min_ratio", "mixup", "momentum", "mosaic",
            "mosaic_bound", "notruth", "num_sigmas_reject_badlabels", "optimized_memory", "policy",
            "power", "random", "resize_step", "saturation", "scale", "scales", "seq_scales",
            "sequential_subdivisions", "sgdr_cycle", "sgdr_mult", "step", "steps", "subdivisions",
            "time_steps", "track", "try_fix_nan", "unsupervised", "use_cuda_graph",
            "weights_reject_freq", "width", "workspace_size_limit_MB"},
    "rnn": {"hidden"},
    "softmax": {"tree", "spatial"},
    "cost": {"ratio", "noobj", "thresh"},
    "dropout": {"dropblock", "dropblock_size_abs", "dropblock_size_rel"},
}
EVERY_LAYER_KEYS = {"burnin_update", "clip", "dont_update", "dontload", "dontloadscales", "dontsave",
                    "learning_rate", "numload", "onlyforward", "show_receptive_field", "smooth",
                    "stopbackward", "train_only_bn", "truth"}  # parse_network_cfg, for every layer


class CfgWarning(UserWarning):
    """A cfg problem Darknet tolerates (an unused key); the CLI prints it as one line."""


class Option:
    __slots__ = ("value", "line", "used")

    def __init__(self, value, line):
        self.value, self.line, self.used = value, line, False


class Section:
    """One `[type]` block: its options keep their line numbers so every error can point at them."""

    def __init__(self, type, path, line):
        self.type, self.path, self.line = type, path, line
        self.options = {}
        self.asked = []  # every key a getter asked for, present or defaulted, in asking order
        self.repeats = []  # (key, value, line) of keys given again: unused, as in Darknet

    def error(self, message, key=None):
        """A DarknetpyError at the key's line (or the section's line)."""
        line = self.options[key].line if key in self.options else self.line
        return DarknetpyError(message, self.path, line)

    def _get(self, key, default, convert, kind):
        if key not in self.asked:
            self.asked.append(key)
        opt = self.options.get(key)
        if opt is None:
            if default is REQUIRED:
                self.refuse_typos()
                raise self.error(f"[{self.type}] needs '{key}=' ({kind})")
            return default
        opt.used = True
        try:
            return convert(opt.value)
        except ValueError:
            raise self.error(f"'{key}={opt.value}' is not {kind}", key) from None

    def int(self, key, default=REQUIRED):
        return self._get(key, default, int, "an integer")

    def float(self, key, default=REQUIRED):
        return self._get(key, default, _finite_float, "a number")

    def str(self, key, default=REQUIRED):
        return self._get(key, default, str, "text")

    def ints(self, key, default=REQUIRED):
        return self._get(key, default, lambda v: [int(p) for p in v.split(",")], "a comma-separated list of integers")

    def floats(self, key, default=REQUIRED):
        return self._get(key, default, lambda v: [_finite_float(p) for p in v.split(",")], "a comma-separated list of numbers")

    def meant(self, key):
        """The asked key an unread `key` is a near miss of, or None: one edit away (a letter
        dropped, added, changed, or two swapped; two edits for keys of 8 letters or more),
        ignoring case. Real Darknet keys of the section are never typos."""
        if key in self.asked or key in DARKNET_KEYS.get(self.type, ()) or \
                (self.type != "net" and key in EVERY_LAYER_KEYS):
            return None
        distances = [(edits(key.lower(), a.lower()), a) for a in self.asked]
        near = [(d, a) for d, a in distances if d <= (2 if len(a) >= 8 else 1)]
        return min(near, key=lambda da: da[0])[1] if near else None

    def refuse_typos(self):
        """Raise at the first unread key that is a near miss of an asked one."""
        for key, opt in self.options.items():
            meant = None if opt.used else self.meant(key)
            if meant is not None:
                raise self.error(f"unknown key '{key}' in [{self.type}]; did you mean '{meant}'?", key)

    def warn_unused(self):
        """Darknet prints `Unused field: 'key = value'` for keys no layer read; so do we (as a warning)."""
        unused = [(key, opt.value, opt.line) for key, opt in self.options.items() if not opt.used]
        for key, value, line in sorted(unused + self.repeats, key=lambda u: u[2]):
            warnings.warn(f"{self.path}:{line}: Unused field: '{key} = {value}'", CfgWarning, stacklevel=2)


def check_unused(sections):
    """After the network is built (every getter has run): typos are errors, then the other unused
    keys are warnings."""
    for section in sections:
        section.refuse_typos()
    for section in sections:
        section.warn_unused()


def edits(a, b):
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
    neighbouring letters, each one edit (Damerau-Levenshtein without edits of edited substrings)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _finite_float(text):
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def parse_cfg(path, kinds):
    """Read a .cfg into a list of Sections; the first must be [net] (or [network]). `kinds` maps
    each layer section name (aliases too) to its class, whose `kind` is the canonical name."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DarknetpyError(f"cannot read cfg: {e.strerror}", path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DarknetpyError(f"cfg is not text (bad byte at offset {e.start})", path) from None
    sections = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.replace(" ", "").replace("\t", "").replace("\r", "")
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DarknetpyError(f"malformed section header '{line}': expected '[type]'", path, number)
            kind = line[1:-1].lower()
            kind = "net" if kind == "network" else kind
            if kind != "net" and kind not in kinds:
                layers = sorted({cls.kind for cls in kinds.values()})
                if kind in OTHER_DARKNET:
                    message = f"layer type [{kind}] is not supported: darknetpy builds recurrent nets ({', '.join(layers)})"
                else:
                    message = f"unknown section type [{kind}]; expected one of {', '.join(sorted(layers + ['net']))}"
                raise DarknetpyError(message, path, number)
            kind = kinds[kind].kind if kind != "net" else kind
            if not sections and kind != "net":
                raise DarknetpyError(f"the first section must be [net] or [network], not [{kind}]", path, number)
            if sections and kind == "net":
                raise DarknetpyError("[net] may appear only once, as the first section", path, number)
            sections.append(Section(kind, path, number))
            continue
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise DarknetpyError(f"cannot parse '{line}': expected key=value or [section]", path, number)
        if not sections:
            raise DarknetpyError(f"'{line}' comes before any section; the file must start with [net]", path, number)
        options = sections[-1].options
        if key in options:  # Darknet's option_find takes the first; a repeat is never read
            sections[-1].repeats.append((key, value, number))
        else:
            options[key] = Option(value, number)
    if not sections:
        raise DarknetpyError("cfg has no sections; it must start with [net]", path)
    if len(sections) == 1:
        raise DarknetpyError("cfg has no layers after [net]", path, sections[0].line)
    return sections
