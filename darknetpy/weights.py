"""Darknet .weights files: read (pjreddie, old int32-seen, transposed, AlexeyAB) and write (pjreddie).

File: int32 major, minor, revision; `seen` as uint64 when major*10+minor >= 2 and both < 1000,
else int32; then every layer's sub-layers in cfg order, each as biases[out], weights[out*in]
(stored [in][out] when major or minor > 1000), and with batchnorm scales, rolling_mean,
rolling_variance. The whole size is checked before any parameter is touched.
"""
import struct

import numpy as np

from . import atomic
from .errors import DarknetpyError

def _segments(net, alexeyab=False):
    """[(layer index, key, view)] in file order. AlexeyAB's fork (header 0, 2, 5) stores some
    layers' sub-layers in its own order: the layer's `alexeyab_order`."""
    out = []
    for i, layer in enumerate(net.layers):
        params = list(layer.params().items())
        order = layer.alexeyab_order if alexeyab else None
        if order:  # stable: keeps in-sub-layer order; what is no sub-layer (peepholes) stays last
            params.sort(key=lambda kv: order.index(kv[0].split(".")[0]) if "." in kv[0] else len(order))
        out += [(i, key, view) for key, view in params]
    return out


def describe(net, i):
    layer, kind = net.layers[i], net.sections[i].type
    return f"layer {i} [{kind}] {layer.inputs} -> {layer.outputs} (cfg line {net.sections[i].line})"


def expected_size(net):
    return 20 + 4 * sum(v.size for _, _, v in _segments(net))


def read_header(data, path):
    if len(data) < 16:
        raise DarknetpyError(f"not a Darknet weights file: {len(data)} bytes, shorter than the header", path)
    major, minor, revision = struct.unpack_from("<3i", data)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise DarknetpyError(f"truncated header: {len(data)} bytes, version {major}.{minor} needs 20", path)
        (seen,) = struct.unpack_from("<Q", data, 12)
        offset = 20
    else:
        (seen,) = struct.unpack_from("<i", data, 12)
        offset = 16
    return (major, minor, revision), seen, offset


def load(net, path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DarknetpyError(f"cannot read weights: {e.strerror}", path) from None
    version, seen, offset = read_header(data, path)
    major, minor, _ = version
    transposed = major > 1000 or minor > 1000
    segments = _segments(net, alexeyab=version == (0, 2, 5))
    need = offset + 4 * sum(v.size for _, _, v in segments)
    if len(data) != need:
        raise DarknetpyError(_mismatch(net, segments, offset, len(data), need), path)
    floats = np.frombuffer(data, "<f4", offset=offset)
    pos = 0
    for _, key, view in segments:
        chunk = floats[pos:pos + view.size]
        pos += view.size
        if view.ndim == 2 and transposed:
            view[...] = chunk.reshape(view.shape[::-1]).T
        else:
            view[...] = chunk.reshape(view.shape)
    net.seen = int(seen)


def _mismatch(net, segments, offset, actual, need):
    """The size error: expected and actual bytes and the first layer that does not fit."""
    head = f"weights do not fit {net.cfg_path}: the cfg needs {need} bytes, the file has {actual}"
    if actual > need:
        return head + f" ({actual - need} bytes left over after the last layer); is it for another cfg?"
    end = offset
    for i in range(len(net.layers)):
        end += 4 * sum(v.size for j, _, v in segments if j == i)
        if end > actual:
            return head + f"; the file ends inside {describe(net, i)}, which needs bytes up to {end}"
    return head


def to_bytes(net):
    """The file `save` writes: pjreddie's layout, header 0, 2, 0, uint64 seen."""
    parts = [struct.pack("<3iQ", 0, 2, 0, net.seen)]
    parts += [np.ascontiguousarray(v, dtype="<f4").tobytes() for _, _, v in _segments(net)]
    return b"".join(parts)


def save(net, path):
    """Write pjreddie's layout, header 0, 2, 0, uint64 seen; atomically (temp file, fsync, rename)."""
    atomic.write(path, to_bytes(net))
