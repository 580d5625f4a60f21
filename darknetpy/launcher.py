"""What an MPI launcher tells a process through its environment, read before numpy loads (this
module imports no numpy): the process's rank, the number of ranks, and how many BLAS threads
each rank should run; and how long OpenBLAS's idle workers may spin. parallel.py does the rest of
the MPI work."""
import os

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def launched():
    """(rank, size) an MPI launcher announced in the environment; (0, 1) if none did
    (size None: a PMIx launcher, which names the rank but not the size)."""
    for rank_var, size_var in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if size_var in os.environ:
            return int(os.environ.get(rank_var, 0)), int(os.environ[size_var])
    if "PMIX_RANK" in os.environ:
        return int(os.environ["PMIX_RANK"]), None
    return 0, 1


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def blas_threads():
    """The threads numpy's BLAS runs, as OpenBLAS and MKL read them at load: the first of
    THREAD_VARS holding a count > 0 (of a list such as "4,2", its first), else every core this
    process may run on. The one count the compiled kernels' pool and bench's report use."""
    for var in THREAD_VARS:
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return cores()


def share_cores():
    """Under a launcher that started several ranks, with no BLAS thread count set, give each rank
    its share of this machine's cores in OPENBLAS_NUM_THREADS and MKL_NUM_THREADS. It must run
    before numpy loads its BLAS, which reads them once: K ranks of one BLAS thread per core each
    would oversubscribe the machine (benchmarks/README.md, "Design measurements"). SLURM's SLURM_CPUS_PER_TASK is the share when set; else the cores this process
    may run on divided by the ranks on this machine (MPICH's MPI_LOCALNRANKS, Open MPI's
    OMPI_COMM_WORLD_LOCAL_SIZE), or all of them for a launcher that names neither and binds each
    rank to its own cores."""
    if launched()[1] == 1 or any(os.environ.get(var) for var in THREAD_VARS):
        return
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
    threads = os.environ.get("SLURM_CPUS_PER_TASK") or str(max(1, cores() // max(1, int(local))))
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads


def quiet_blas_workers():
    """Let OpenBLAS's idle workers sleep almost at once (OPENBLAS_THREAD_TIMEOUT=4: 2^4 cycles)
    where the compiled step loops run (_loop.h, AVX-512 CPUs), unless the user chose a value or
    turned the kernels off. OpenBLAS reads it once, when numpy loads it; by default a worker
    busy-waits for tens of milliseconds after every call, so it holds the second core while the
    loops' own threads need it: the loops then run slower than the per-step products they replace
    (benchmarks/README.md, "Issue 28"). Where the loops are not built, the per-step products call
    OpenBLAS every step and a waking worker would cost them: nothing is set. A program that loads
    numpy before darknetpy keeps OpenBLAS's default; it can set the variable itself."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or os.environ.get("DARKNETPY_KERNELS") == "0":
        return
    try:
        from . import _kernels  # a C extension that loads no numpy
    except ImportError:
        return
    if hasattr(_kernels, "loop_threads"):
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
