"""Data parallelism over MPI, and the single-process stand-in with the same methods.

``mpiexec -n K axon-llm train ...`` starts K copies of the same program. Each copy:

1. builds the same model and takes rank 0's parameters (:meth:`World.broadcast_arrays`);
2. draws the same global batch and keeps its ``B / K`` rows (axon_llm/data.py);
3. computes gradients of *its share of the global loss* (each rank divides its summed
   loss by the global number of targets), so summing the ranks' gradients gives exactly
   the gradient of the whole batch — :meth:`World.allreduce_sum_` sums all gradients
   in one fused float buffer (one MPI call a step, not one per tensor);
4. applies the identical optimizer step; only rank 0 writes checkpoints and logs.

An error on one rank calls ``MPI_Abort``, which stops all of them (no rank is left
waiting in a collective). Without ``mpiexec`` — or without mpi4py installed — the same
code runs in one process through :class:`SingleProcess`.

MPI comes from PyPI: ``pip install axon-llm[mpi]`` (mpi4py and the ``mpich`` wheel).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from axon_llm.errors import LLMError

__all__ = ["World", "SingleProcess", "MPIWorld", "get_world", "launched_by_mpi"]

# variables that MPI launchers (MPICH's hydra, Open MPI, PMIx, MVAPICH) set in every process
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(LLMError, RuntimeError):
    """MPI is needed but not usable (mpi4py missing, or a launcher mismatch)."""


def launched_by_mpi() -> int:
    """The world size announced by an MPI launcher's environment, or 0 when not launched by one."""
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


class World:
    """What the trainer needs from a group of processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs (rank 0)."""
        return self.rank == 0

    def broadcast_arrays(self, arrays: list[np.ndarray]) -> None:  # pragma: no cover - interface
        """Overwrite every array in place with rank 0's values."""
        raise NotImplementedError

    def allreduce_sum_(self, arrays: list[np.ndarray]) -> None:  # pragma: no cover - interface
        """Replace every array in place by its sum over the ranks (one fused call)."""
        raise NotImplementedError

    def allreduce_scalar(self, value: float) -> float:  # pragma: no cover - interface
        """Sum of a float over the ranks."""
        raise NotImplementedError

    def broadcast_object(self, obj):  # pragma: no cover - interface
        """Rank 0's ``obj`` on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:  # pragma: no cover - interface
        """Wait for every rank."""

    def abort(self, code: int = 1) -> None:
        """Stop every rank (a plain exit with one process)."""
        sys.exit(code)


class SingleProcess(World):
    """One process: every collective is the identity."""

    rank, size = 0, 1

    def broadcast_arrays(self, arrays):
        """Nothing to do: this process is rank 0."""
        return None

    def allreduce_sum_(self, arrays):
        """Nothing to do: the sum over one rank is the array itself."""
        return None

    def allreduce_scalar(self, value: float) -> float:
        """``value`` as a float (the sum over one rank)."""
        return float(value)

    def broadcast_object(self, obj):
        """``obj`` itself."""
        return obj

    def barrier(self) -> None:
        """Nothing to wait for."""
        return None


def _flat_views(arrays: list[np.ndarray], buffer: np.ndarray) -> list[np.ndarray]:
    views, offset = [], 0
    for a in arrays:
        views.append(buffer[offset: offset + a.size].reshape(a.shape))
        offset += a.size
    return views


class MPIWorld(World):
    """``MPI.COMM_WORLD`` through mpi4py, with one reusable fused buffer per dtype."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise DistributedError(
                f"this process was started by an MPI launcher but mpi4py cannot be imported ({e}); "
                "install it with `pip install axon-llm[mpi]` (mpi4py + mpich)") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._buffers: dict[np.dtype, np.ndarray] = {}

    def _buffer(self, arrays: list[np.ndarray]) -> np.ndarray:
        dtype = np.result_type(*[a.dtype for a in arrays])
        n = sum(a.size for a in arrays)
        buf = self._buffers.get(dtype)
        if buf is None or buf.size < n:
            buf = self._buffers[dtype] = np.empty(n, dtype=dtype)
        return buf[:n]

    def broadcast_arrays(self, arrays):
        """Overwrite every array in place with rank 0's values (one ``Bcast`` of a fused buffer)."""
        if not arrays:
            return
        buf = self._buffer(arrays)
        views = _flat_views(arrays, buf)
        if self.rank == 0:
            for v, a in zip(views, arrays):
                v[...] = a
        self.comm.Bcast(buf, root=0)
        for v, a in zip(views, arrays):
            a[...] = v

    def allreduce_sum_(self, arrays):
        """Replace every array in place by its sum over the ranks (one ``Allreduce`` of a fused buffer)."""
        if not arrays:
            return
        buf = self._buffer(arrays)                                     # [sum of sizes]
        views = _flat_views(arrays, buf)
        for v, a in zip(views, arrays):
            v[...] = a
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        for v, a in zip(views, arrays):
            a[...] = v

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over the ranks."""
        return float(self.comm.allreduce(float(value), op=self.MPI.SUM))

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (pickled) on every rank."""
        return self.comm.bcast(obj, root=0)

    def barrier(self) -> None:
        """Wait for every rank."""
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """Flush stdout/stderr and stop every rank with ``MPI_Abort(code)``."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def get_world() -> World:
    """:class:`MPIWorld` when started by ``mpiexec`` with more than one process, else :class:`SingleProcess`."""
    if launched_by_mpi() > 1:
        return MPIWorld()
    return SingleProcess()
