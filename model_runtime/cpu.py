"""Facts about the CPU the runtime is on, and the threads it should use.

Read, never assumed: the ISA torch dispatches to, the CPU's name, and the cores this process may really use
(its affinity mask and its cgroup's CPU quota, counted in physical cores, not the host's logical CPUs). A
container limited to 2 CPUs on a 64-core host otherwise runs 64 OpenMP threads fighting over 2 cores.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Environment variables that change which kernels run (ATen's dispatch and oneDNN's GEMMs), part of a plan's key.
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# Flags that decide the fast paths of the linears (bf16 and int8 dot products, AMX tiles).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimd", "bf16",
             "i8mm", "sve")


@dataclass(frozen=True)
class CpuInfo:
    name: str  # "AMD EPYC 7B13", from /proc/cpuinfo
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    flags: tuple[str, ...]  # the ISA_FLAGS present
    isa_env: tuple[tuple[str, str], ...]  # ISA_ENV variables that are set
    torch: str
    threads: int  # torch.get_num_threads() at the time of reading

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        env = "".join(f" {k}={v}" for k, v in self.isa_env)
        return f"{self.name} ({self.capability}{env}), torch {self.torch}, {self.threads} threads"


def cpu_info() -> CpuInfo:
    name, flags = _proc_cpuinfo()
    return CpuInfo(
        name=name,
        capability=torch.backends.cpu.get_cpu_capability(),
        flags=tuple(f for f in ISA_FLAGS if f in flags),
        isa_env=tuple((k, os.environ[k]) for k in ISA_ENV if os.environ.get(k)),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )


def _proc_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine(), flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or "unknown CPU", flags


# ---------------------------------------------------------------------------------------------------------------
# Threads.


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 cpu.max or v1 cfs quota), None when unlimited."""
    base = Path(root)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def physical_cores(cpus: set[int], sysfs: str = "/sys/devices/system/cpu") -> int:
    """How many physical cores the logical CPUs `cpus` sit on (SMT siblings count once)."""
    cores = set()
    for cpu in cpus:
        topo = Path(sysfs) / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


def available_cores(cgroup_root: str = "/sys/fs/cgroup", sysfs: str = "/sys/devices/system/cpu") -> int:
    """The physical cores this process can use: its affinity mask, counted in physical cores, capped by the
    cgroup's CPU quota."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        cpus = set(range(os.cpu_count() or 1))
    cores = physical_cores(cpus, sysfs)
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return cores


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to the available physical cores (or `requested`) unless the user chose a count
    with OMP_NUM_THREADS; keep the tokenizer's own thread pool out of the decode threads' way. Returns the count."""
    # The Rust tokenizer parallelises long inputs over every logical CPU; on a 2-core machine that competes with
    # the decode threads for each keystroke's few hundred characters, where it gains nothing.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = requested or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
