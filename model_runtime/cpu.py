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


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs, None when unlimited: cgroup v2's cpu.max or v1's CFS quota,
    of the process's own group and of every group above it (the smallest wins)."""
    limits = [q for d in _cgroup_dirs(Path(root), proc) if (q := _quota(d)) is not None]
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, proc: str) -> list[Path]:
    """The folders whose quota applies to this process: its group under each CPU hierarchy, and their parents."""
    own: list[Path] = []
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            own.append(root / rel)
        elif "cpu" in controllers.split(","):
            own.append(root / controllers / rel)
            own += [root / name / rel for name in ("cpu", "cpu,cpuacct") if name != controllers]
    own += [root, root / "cpu"]  # a namespaced container sees its own group as the root
    dirs: list[Path] = []
    for d in own:
        while True:
            if d not in dirs:
                dirs.append(d)
            if d == root or d.parent == d or root not in d.parents:
                break
            d = d.parent
    return dirs


def _quota(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
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


def available_cores(cgroup_root: str = "/sys/fs/cgroup", sysfs: str = "/sys/devices/system/cpu",
                    proc: str = "/proc/self/cgroup") -> int:
    """The physical cores this process can use: its affinity mask, counted in physical cores, capped by the
    cgroup's CPU quota."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        cpus = set(range(os.cpu_count() or 1))
    cores = physical_cores(cpus, sysfs)
    limit = cgroup_cpu_limit(cgroup_root, proc)
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
