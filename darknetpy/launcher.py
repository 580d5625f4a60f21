"""What an MPI launcher tells a process through its environment, read before numpy loads (this
module imports no numpy): the process's rank, the number of ranks, and how many BLAS threads
each rank should run. parallel.py does the rest of the MPI work."""
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
