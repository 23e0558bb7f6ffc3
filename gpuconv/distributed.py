"""Data-parallel training over processes: MPI (mpi4py) launches and connects them and reduces host
arrays; NCCL (``cupy.cuda.nccl``, its unique id broadcast over MPI) reduces GPU arrays.

    comm = gpuconv.distributed.init()      # then compile/fit/evaluate as usual; run with mpiexec -n N
    if comm.rank == 0: model.save("final.gpuconv")

After ``init()``, ``Sequential.fit`` runs data-parallel: ``batch_size`` is the global batch, each rank
computes its shard of every batch (after the shuffle, which every rank draws alike), and one allreduce
per step sums the gradients of all parameters, packed into one buffer with the step's loss and metric
counts. Initial weights, optimizer state and the shuffle seed come from rank 0. BatchNormalization
uses the global batch's statistics (allreduces of its sums). ``evaluate`` shards its data and reduces.
Only rank 0 prints progress and writes ModelCheckpoint/CSVLogger files.

Without mpi4py, or outside ``mpiexec`` (no PMI environment), ``init()`` gives a size-1 communicator and
nothing changes. An uncaught exception on any rank prints its traceback once (that rank's) and calls
``MPI_Abort`` once the launcher has read it, so no rank waits forever in a collective.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import stat
import struct
import sys
import time
import traceback

import numpy as np

from gpuconv import backend

logger = logging.getLogger("gpuconv")

# environment variables a process manager sets for its ranks (MPICH/Hydra and PMIx, Open MPI, Slurm)
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class Communicator:
    """The process group: ``rank``, ``size``, ``local_rank`` (index among the ranks on this node),
    ``local_size``, ``backend`` ('mpi', 'nccl', or 'none' for a single process without MPI).

    ``stats`` counts the allreduce calls, bytes (per rank, sent) and seconds, for measurements.
    """

    def __init__(self, mpi_comm=None, nccl_comm=None):
        self.mpi = mpi_comm
        self.nccl = nccl_comm
        if mpi_comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            from mpi4py import MPI
            node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        self.backend = "nccl" if nccl_comm is not None else ("mpi" if mpi_comm is not None else "none")
        self.stats = {"allreduce_calls": 0, "allreduce_bytes": 0, "allreduce_seconds": 0.0}

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, backend={self.backend!r})"

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_sum(self, buffer):
        """Sum ``buffer`` (a contiguous NumPy or CuPy array) over all ranks, in place; returns it."""
        if self.size == 1:
            return buffer
        start = time.perf_counter()
        if self.nccl is not None and not isinstance(buffer, np.ndarray):
            self._nccl_allreduce(buffer)
        elif isinstance(buffer, np.ndarray):
            from mpi4py import MPI
            self.mpi.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        else:  # a GPU array without NCCL: through the host
            from mpi4py import MPI
            host = backend.to_host(buffer)
            self.mpi.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            buffer[...] = backend.to_device(host)
        self.stats["allreduce_calls"] += 1
        self.stats["allreduce_bytes"] += int(buffer.nbytes)
        self.stats["allreduce_seconds"] += time.perf_counter() - start
        return buffer

    def _nccl_allreduce(self, buffer):
        import cupy
        from cupy.cuda import nccl
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        if buffer.dtype not in types or not buffer.flags.c_contiguous:
            raise TypeError(f"NCCL allreduce takes contiguous float32/float64 buffers, got {buffer.dtype}")
        stream = cupy.cuda.get_current_stream()
        self.nccl.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, types[buffer.dtype], nccl.NCCL_SUM,
                            stream.ptr)
        stream.synchronize()

    def broadcast_arrays(self, arrays):
        """Rank 0's arrays on every rank (one packed broadcast); ``arrays`` gives each one's shape and dtype."""
        if self.size == 1 or not arrays:
            return list(arrays)
        hosts = [np.ascontiguousarray(backend.to_host(a)) for a in arrays]
        packed = np.concatenate([h.astype(np.float64).ravel() for h in hosts])
        self.mpi.Bcast(packed, root=0)
        out, offset = [], 0
        for h in hosts:
            out.append(packed[offset:offset + h.size].reshape(h.shape).astype(h.dtype))
            offset += h.size
        return out

    def broadcast_object(self, value):
        return value if self.size == 1 else self.mpi.bcast(value, root=0)

    def allgather_object(self, value):
        return [value] if self.size == 1 else self.mpi.allgather(value)

    def barrier(self):
        if self.size > 1:
            self.mpi.Barrier()

    def abort(self, code=1):
        if self.mpi is not None:
            self.mpi.Abort(code)
        os._exit(code)


_world = Communicator()
_data_parallel: contextvars.ContextVar = contextvars.ContextVar("gpuconv_data_parallel", default=None)


def world() -> Communicator:
    """The communicator ``init()`` made (size 1 before, or in a single process)."""
    return _world


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def init() -> Communicator:
    """Join the process group started by ``mpiexec`` (once; later calls return the same communicator).

    Each rank then uses ``cpu_count / ranks on its node`` CPU threads (unless NUMBA_NUM_THREADS is set)
    and, on a GPU backend, GPU ``local_rank``; collectives on GPU arrays go through NCCL.
    """
    global _world
    if _world.size > 1 or _world.mpi is not None:
        return _world
    if not launched_by_mpi():
        return _world
    try:
        from mpi4py import MPI
    except ImportError:
        logger.warning("started by an MPI launcher but mpi4py is not installed: running as a single process "
                       "(pip install -e '.[mpi]')")
        return _world
    comm = Communicator(MPI.COMM_WORLD)
    if comm.size > 1:
        sys.excepthook = _abort_on_uncaught(comm, sys.excepthook)
        if "NUMBA_NUM_THREADS" not in os.environ:
            import numba
            numba.set_num_threads(max(1, min(numba.get_num_threads(), (os.cpu_count() or 1) // comm.local_size)))
    if backend.get_backend() in backend.GPU_BACKENDS:
        comm = _with_gpu(comm)
    _world = comm
    return comm


def _with_gpu(comm):
    """Bind this rank to GPU ``local_rank`` and open an NCCL communicator over all ranks."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    if comm.local_size > count:
        raise RuntimeError(f"{comm.local_size} ranks on this node but {count} GPU(s): start at most one rank per "
                           f"GPU (mpiexec -n {count} per node, or -ppn {count} with a hostfile)")
    cupy.cuda.Device(comm.local_rank).use()
    try:
        from cupy.cuda import nccl
    except ImportError:
        logger.warning("CuPy has no NCCL here: GPU allreduces go through the host over MPI")
        return comm
    unique_id = comm.broadcast_object(nccl.get_unique_id() if comm.is_root else None)
    return Communicator(comm.mpi, nccl.NcclCommunicator(comm.size, unique_id, comm.rank))


def _abort_on_uncaught(comm, previous):
    def hook(kind, value, tb):
        sys.stderr.write(f"gpuconv.distributed: rank {comm.rank} of {comm.size} failed; aborting all ranks\n"
                         + "".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.flush()
        sys.stdout.flush()
        _wait_until_launcher_reads((1, 2))
        comm.abort(1)
    hook.previous = previous
    return hook


def _wait_until_launcher_reads(fds, limit_s=2.0):
    """Wait (at most ``limit_s``) until the launcher has read what this rank wrote to the pipes ``fds``.

    Hydra forwards a rank's output only while it runs: text still in the pipe when ``MPI_Abort`` lands can
    be dropped, and was, about one job in fifty. Once the launcher has read it, it is sent ahead of the abort.
    """
    try:
        import fcntl
        import termios
    except ImportError:  # not POSIX
        return

    def unread(fd):
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):  # a file or terminal keeps what was written
                return 0
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    deadline = time.monotonic() + limit_s
    while any(unread(fd) for fd in fds) and time.monotonic() < deadline:
        time.sleep(0.002)


@contextlib.contextmanager
def data_parallel(comm):
    """Inside, BatchNormalization in training sums its statistics over ``comm`` (fit's steps)."""
    token = _data_parallel.set(comm if comm.size > 1 else None)
    try:
        yield
    finally:
        _data_parallel.reset(token)


def cross_replica_sum():
    """The function summing an array over the data-parallel group, or None outside a data-parallel step."""
    comm = _data_parallel.get()
    if comm is None:
        return None

    def total(array):
        buffer = array.copy() if array.flags.c_contiguous else array.astype(array.dtype, order="C")
        return comm.allreduce_sum(buffer)
    return total


def fingerprint(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]
