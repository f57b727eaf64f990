"""cowblock: copy-on-write thin-provisioned block devices with O(1) snapshots.

    import cowblock
    with cowblock.Pool.create("pool", size=10 * 2**30) as pool:
        base = pool.create_device("base", 2**30)
        base.write(0, b"hello")
        snap = pool.snapshot("base", "snap")       # O(1), allocates nothing
        snap.write(0, b"HELLO")                     # copy-up of one sub-block
        assert base.read(0, 5) == b"hello"
"""
from .errors import (
    BusyError,
    ChecksumError,
    ClosedError,
    CorruptError,
    CowblockError,
    ExistsError,
    ExternalOriginError,
    InvalidArgumentError,
    IOFailedError,
    LimitError,
    NotFoundError,
    PoolFailedError,
    PoolFullError,
    ReadOnlyError,
    StaleError,
    UnsupportedVersionError,
)
from .pool import (
    CheckReport, Device, DeviceInfo, DeviceUsage, Pool, PoolUsage, ScrubDamage, ScrubReport,
    backends,
)

__version__ = "0.1.0"

__all__ = [
    "Pool", "Device", "DeviceInfo", "DeviceUsage", "PoolUsage", "CheckReport",
    "ScrubReport", "ScrubDamage", "ChecksumError",
    "CowblockError", "InvalidArgumentError", "NotFoundError", "ExistsError",
    "ReadOnlyError", "PoolFullError", "CorruptError", "UnsupportedVersionError",
    "BusyError", "PoolFailedError", "LimitError", "ExternalOriginError",
    "ClosedError", "IOFailedError", "StaleError", "backends",
]
