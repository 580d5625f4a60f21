"""Darknet .cfg reader: sections with file:line, typed getters, unused-option warnings.

Grammar (Darknet's read_cfg): every line first loses ALL spaces and tabs; empty lines and lines
starting with '#' or ';' are ignored; '[type]' opens a section; every other line is 'key=value'.
"""
import warnings

from .errors import DarknetpyError

# Darknet layer types that exist but are not recurrent-side layers; named so the error can say so.
OTHER_DARKNET = {"shortcut", "crop", "detection", "region", "yolo", "local", "conv", "convolutional",
                 "deconv", "deconvolutional", "activation", "logistic", "l2norm", "crnn", "max",
                 "maxpool", "reorg", "avg", "avgpool", "lrn", "normalization", "batchnorm", "route",
                 "upsample", "iseg"}
REQUIRED = object()


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
        self.repeats = []  # (key, value, line) of keys given again: unused, as in Darknet

    def error(self, message, key=None):
        """A DarknetpyError at the key's line (or the section's line)."""
        line = self.options[key].line if key in self.options else self.line
        return DarknetpyError(message, self.path, line)

    def _get(self, key, default, convert, kind):
        opt = self.options.get(key)
        if opt is None:
            if default is REQUIRED:
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

    def warn_unused(self):
        """Darknet prints `Unused field: 'key = value'` for keys no layer read; so do we (as a warning)."""
        unused = [(key, opt.value, opt.line) for key, opt in self.options.items() if not opt.used]
        for key, value, line in sorted(unused + self.repeats, key=lambda u: u[2]):
            warnings.warn(f"{self.path}:{line}: Unused field: '{key} = {value}'", CfgWarning, stacklevel=2)


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
