"""Writing a file so that a crash leaves either the old file or the new one (weights, checkpoints,
the run record, the metrics log, vocabularies, ONNX models: every file darknetpy writes)."""
import os
import tempfile


def write(path, data):
    """Replace `path` with `data` (bytes): written to a temporary file beside it, synced, renamed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
