"""worker.failures: which unexpected errors are transient (retried, not the input's fault)."""

from __future__ import annotations

import errno

from redis.exceptions import ConnectionError as RedisConnectionError

from worker.failures import transient_reason


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError by name (torch is not imported here)."""


def test_no_space_io_errors_gpu_memory_and_a_lost_redis_are_transient():
    """ENOSPC, EDQUOT, EIO, CUDA out of memory and a Redis connection error, also as a cause."""
    assert transient_reason(OSError(errno.ENOSPC, "No space left on device")) == (
        "no space left on the device"
    )
    assert transient_reason(OSError(errno.EDQUOT, "quota")) == "the disk quota is exceeded"
    assert transient_reason(OSError(errno.EIO, "I/O")) == "an I/O error"
    assert transient_reason(OutOfMemoryError("CUDA out of memory")) == "the GPU is out of memory"
    assert transient_reason(RedisConnectionError("gone")) == "Redis was lost"
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as exc:
            raise ValueError("while writing") from exc
    except ValueError as wrapped:
        assert transient_reason(wrapped) == "no space left on the device"


def test_other_errors_are_not_transient():
    """A permission error, a missing file or a plain bug are not transient."""
    assert transient_reason(OSError(errno.EACCES, "denied")) is None
    assert transient_reason(FileNotFoundError("x")) is None
    assert transient_reason(ValueError("bug")) is None
