"""CPU placement: discover the machine (hwloc), decide which CPUs a worker uses, bind to them.

Three parts, so the decision can be tested without the hardware it is about:

- `discover()` reads the topology (packages, NUMA nodes, physical cores with their PUs, and
  the GPUs with the CPUs local to them) through pyhwloc, or falls back to what the OS says.
- `plan()` is pure: topology + `--cpu-bind` spec (`none`, `auto` or a list like `0,2-3`)
  → a `Placement`.
- `apply()` binds the whole process (every existing thread, so threads started by imported
  libraries are included; threads created later inherit the mask).

Memory is not bound explicitly: Linux allocates pages on the node of the CPU that first
touches them, so binding the threads to one node's cores keeps their memory local too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Core",
    "Gpu",
    "NumaNode",
    "Package",
    "Placement",
    "Topology",
    "apply",
    "bind_current_thread",
    "discover",
    "format_cpu_list",
    "parse_cpu_list",
    "plan",
]

_NVIDIA_PCI_VENDOR = 0x10DE
_PCI_CLASS_DISPLAY = 0x03  # VGA and 3D controllers; datacenter GPUs are 0x0302


@dataclass(frozen=True)
class Package:
    """A physical socket."""

    index: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class NumaNode:
    """A NUMA node. `cpus` may be empty (memory-only nodes: CXL, HBM, GPU memory)."""

    index: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Core:
    """A physical core; `pus` are its logical CPU ids (more than one with SMT)."""

    index: int
    pus: tuple[int, ...]


@dataclass(frozen=True)
class Gpu:
    """A GPU and the part of the machine it is attached to (its non-I/O hwloc ancestor)."""

    index: int
    name: str
    pci_bus_id: str | None
    numa_nodes: tuple[int, ...]
    cpus: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "pci_bus_id": self.pci_bus_id,
            "numa_nodes": list(self.numa_nodes),
            "cpus": format_cpu_list(self.cpus),
        }


@dataclass(frozen=True)
class Topology:
    """What the worker can run on. `allowed` is the process affinity at discovery time.

    `source` says where the picture came from: "hwloc", or "os" when hwloc failed and only
    the affinity mask is known (then every CPU counts as its own core on one node).
    """

    source: Literal["hwloc", "os"]
    allowed: tuple[int, ...]
    packages: tuple[Package, ...] = ()
    numa_nodes: tuple[NumaNode, ...] = ()
    cores: tuple[Core, ...] = ()
    gpus: tuple[Gpu, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "allowed": format_cpu_list(self.allowed),
            "packages": len(self.packages),
            "numa_nodes": {str(n.index): format_cpu_list(n.cpus) for n in self.numa_nodes},
            "cores": len(self.cores),
            "pus": sum(len(c.pus) for c in self.cores),
            "gpus": [g.as_dict() for g in self.gpus],
        }


@dataclass(frozen=True)
class Placement:
    """The decision for one worker. `bind` is False for `none`: `cpus` is then just the
    affinity the process already has."""

    spec: str
    cpus: tuple[int, ...]
    numa_nodes: tuple[int, ...]
    gpu: Gpu | None
    description: str
    bind: bool
    source: str
    worker_index: int = 0
    workers: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; also used as structlog key/values (so no `event` key)."""
        return {
            "spec": self.spec,
            "bind": self.bind,
            "cpus": list(self.cpus),
            "cpu_list": format_cpu_list(self.cpus),
            "numa_nodes": list(self.numa_nodes),
            "gpu": self.gpu.as_dict() if self.gpu else None,
            "description": self.description,
            "topology": self.source,
            "worker_index": self.worker_index,
            "workers": self.workers,
        }


# ---------------------------------------------------------------- CPU list strings

_LIST_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a Linux-style CPU list (`0,2-3`, as taskset -c and cpuset files use)."""
    cpus: set[int] = set()
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(f"invalid CPU list {text!r}: expected e.g. '0,2-3'")
    for item in items:
        match = _LIST_ITEM.match(item)
        if match is None:
            raise ValueError(f"invalid CPU list {text!r}: {item!r} is not N or N-M")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"invalid CPU list {text!r}: range {item!r} is reversed")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: tuple[int, ...] | list[int] | set[int]) -> str:
    """The inverse of `parse_cpu_list`: compact ranges, e.g. (0, 2, 3) -> '0,2-3'."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


# ---------------------------------------------------------------- discovery


def _affinity() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def _os_topology() -> Topology:
    """Fallback: each allowed CPU is its own core on a single node (SMT is unknown)."""
    allowed = _affinity()
    return Topology(
        source="os",
        allowed=allowed,
        packages=(Package(0, allowed),),
        numa_nodes=(NumaNode(0, allowed),),
        cores=tuple(Core(i, (cpu,)) for i, cpu in enumerate(allowed)),
        gpus=(),
    )


def discover() -> Topology:
    """Read this machine's topology with hwloc; never raises (falls back to the OS view)."""
    try:
        return _hwloc_topology()
    except Exception:  # hwloc missing, unsupported platform, or a load error
        return _os_topology()


def _bits(bitmap: Any) -> tuple[int, ...]:
    return tuple(sorted(int(b) for b in bitmap)) if bitmap is not None else ()


def _hwloc_topology() -> Topology:
    import pyhwloc
    from pyhwloc.topology import TypeFilter

    # I/O objects are filtered out by default; KEEP_IMPORTANT keeps GPUs and their PCI path.
    topo = pyhwloc.from_this_system().set_io_types_filter(TypeFilter.KEEP_IMPORTANT)
    return _from_hwloc(topo, set(_affinity()))


def _from_hwloc(topo: Any, allowed_now: set[int]) -> Topology:
    """Convert a (not yet loaded) pyhwloc topology; split out so tests can feed hwloc XML
    of machines this one is not (several NUMA nodes, GPUs)."""
    from pyhwloc.hwobject import ObjOsdevType

    with topo:
        machine_cpus = set(_bits(topo.allowed_cpuset))
        allowed = tuple(sorted(machine_cpus & allowed_now)) or tuple(sorted(allowed_now))
        packages = tuple(Package(p.logical_index, _bits(p.cpuset)) for p in topo.iter_packages())
        nodes = tuple(NumaNode(n.os_index, _bits(n.cpuset)) for n in topo.iter_numa_nodes())
        cores = tuple(Core(c.logical_index, _bits(c.cpuset)) for c in topo.iter_cores())
        if not cores:  # some VMs/architectures report PUs without cores
            cores = tuple(Core(i, (pu.os_index,)) for i, pu in enumerate(topo.iter_cpus()))

        def locality(obj: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
            """CPUs and NUMA nodes of the first non-I/O ancestor (where the device hangs)."""
            parent = obj.parent
            while parent is not None and (parent.is_io() or parent.cpuset is None):
                parent = parent.parent
            if parent is None:
                return (), ()
            return _bits(parent.cpuset), _bits(parent.nodeset)

        def pci_bus_id(obj: Any) -> str | None:
            parent = obj.parent if not obj.is_pci_device() else obj
            while parent is not None and parent.is_io() and not parent.is_pci_device():
                parent = parent.parent
            if parent is None or not parent.is_pci_device():
                return None
            pid = parent.pci_id
            return f"{pid.domain:04x}:{pid.bus:02x}:{pid.dev:02x}.{parent.func:x}"

        # GPUs: CUDA OS devices first (their index is the CUDA device index), then NVML,
        # then any other NVIDIA GPU OS device; one entry per PCI device.
        found: dict[str, tuple[int, str, Any]] = {}
        for dev in topo.iter_os_devices():
            name = dev.name or ""
            subtype = (dev.subtype or "").upper()
            is_gpu = dev.is_osdev_type(ObjOsdevType.GPU | ObjOsdevType.COPROC)
            if not is_gpu:
                continue
            bus = pci_bus_id(dev)
            vendor_nvidia = "nvidia" in (dev.info.get("GPUVendor", "")).lower()
            if subtype == "CUDA" or name.startswith("cuda"):
                rank = 0
            elif subtype == "NVML" or name.startswith("nvml"):
                rank = 1
            elif vendor_nvidia:
                rank = 2
            else:
                continue
            key = bus or name
            if key not in found or rank < found[key][0]:
                found[key] = (rank, name, dev)
        # NVIDIA display/3D PCI functions with no OS device (no driver plugin in hwloc).
        for pci in topo.iter_pci_devices():
            if pci.vendor_id == _NVIDIA_PCI_VENDOR and pci.base_class == _PCI_CLASS_DISPLAY:
                bus = pci_bus_id(pci)
                if bus is not None and bus not in found:
                    found[bus] = (3, f"pci:{bus}", pci)

        def order(entry: tuple[str, tuple[int, str, Any]]) -> tuple[int, int, str]:
            rank, name, _ = entry[1]
            digits = re.search(r"(\d+)$", name)
            return (rank, int(digits.group(1)) if digits else 0, entry[0])

        gpus: list[Gpu] = []
        for i, (bus, (_, name, dev)) in enumerate(sorted(found.items(), key=order)):
            cpus, node_ids = locality(dev)
            gpus.append(
                Gpu(
                    index=i,
                    name=name,
                    pci_bus_id=bus if ":" in bus else None,
                    numa_nodes=node_ids,
                    cpus=cpus,
                )
            )
    return Topology(
        source="hwloc",
        allowed=allowed,
        packages=packages,
        numa_nodes=nodes,
        cores=cores,
        gpus=tuple(gpus),
    )


# ---------------------------------------------------------------- decision


def _split(items: list[Any], parts: int, rank: int) -> list[Any]:
    """The rank-th of `parts` contiguous, disjoint, near-equal slices (first ones larger)."""
    base, extra = divmod(len(items), parts)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (1 if rank < extra else 0)]


def _share(cores: list[tuple[int, ...]], parts: int, rank: int) -> tuple[tuple[int, ...], str]:
    """CPUs for worker `rank` of `parts` sharing `cores` (each a tuple of allowed PUs).

    Whole physical cores when there are enough of them (a worker's SMT siblings stay its
    own). Otherwise single PUs, one PU per core first and SMT siblings after, dealt out
    round-robin so the sets stay disjoint; only with more workers than PUs do sets repeat.
    """
    if parts <= len(cores):
        mine = _split(cores, parts, rank)
        return tuple(sorted(pu for core in mine for pu in core)), f"{len(mine)} core(s)"
    depth = max(len(core) for core in cores)
    pus = [core[level] for level in range(depth) for core in cores if level < len(core)]
    if parts <= len(pus):
        return tuple(sorted(pus[rank::parts])), "PU(s) of shared cores"
    return (pus[rank % len(pus)],), "1 PU shared with other workers (more workers than PUs)"


def _nodes_of(topology: Topology, cpus: tuple[int, ...]) -> tuple[int, ...]:
    wanted = set(cpus)
    return tuple(sorted(n.index for n in topology.numa_nodes if wanted & set(n.cpus)))


def _usable_cores(topology: Topology, allowed: set[int]) -> list[tuple[int, ...]]:
    """Cores restricted to allowed PUs, in topology order; empty cores dropped."""
    cores = [tuple(sorted(pu for pu in c.pus if pu in allowed)) for c in topology.cores]
    cores = [c for c in cores if c]
    covered = {pu for c in cores for pu in c}
    # CPUs the core list does not know about (odd topologies) count as cores of their own.
    cores.extend((cpu,) for cpu in sorted(allowed - covered))
    return cores


def plan(
    topology: Topology,
    spec: str,
    *,
    worker_index: int = 0,
    workers: int = 1,
    prefer_gpu: bool = True,
) -> Placement:
    """Decide where worker `worker_index` of `workers` runs. Pure: same input, same answer.

    - `none`: no binding; reports the current affinity.
    - `auto`: with a GPU (and `prefer_gpu`), the CPUs local to it — workers round-robin over
      the GPUs; otherwise workers round-robin over the NUMA nodes that have CPUs. Workers
      landing on the same node get disjoint sets of physical cores. Never empty.
    - a CPU list (`0,2-3`): exactly those CPUs; they must be allowed for this process.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 <= worker_index < workers:
        raise ValueError(f"worker index must be in 0..{workers - 1}, got {worker_index}")
    allowed = set(topology.allowed) or {pu for c in topology.cores for pu in c.pus}
    if not allowed:
        raise ValueError("the topology has no CPUs this process may use")
    mode = spec.strip().lower()
    common: dict[str, Any] = {
        "spec": mode if mode in {"auto", "none"} else spec.strip(),
        "source": topology.source,
        "worker_index": worker_index,
        "workers": workers,
    }

    if mode == "none":
        cpus = tuple(sorted(allowed))
        return Placement(
            cpus=cpus,
            numa_nodes=_nodes_of(topology, cpus),
            gpu=None,
            description=f"not bound: current affinity {format_cpu_list(cpus)}",
            bind=False,
            **common,
        )

    if mode != "auto":
        cpus = parse_cpu_list(spec)
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise ValueError(
                f"--cpu-bind {spec!r}: CPU(s) {format_cpu_list(outside)} are not available "
                f"to this process (allowed: {format_cpu_list(allowed)})"
            )
        return Placement(
            cpus=cpus,
            numa_nodes=_nodes_of(topology, cpus),
            gpu=None,
            description=f"explicit CPU list {format_cpu_list(cpus)}",
            bind=True,
            **common,
        )

    cores = _usable_cores(topology, allowed)
    if prefer_gpu and topology.gpus:
        gpus = topology.gpus
        gpu = gpus[worker_index % len(gpus)]
        local = set(gpu.cpus)
        local_cores = [c for c in cores if set(c) <= local] or [
            c for c in (tuple(pu for pu in core if pu in local) for core in cores) if c
        ]
        if local_cores:
            peers = len(range(worker_index % len(gpus), workers, len(gpus)))
            cpus, how = _share(local_cores, peers, worker_index // len(gpus))
            nodes = _nodes_of(topology, cpus) or gpu.numa_nodes
            where = f"NUMA node {format_cpu_list(nodes)}" if nodes else "its CPUs"
            return Placement(
                cpus=cpus,
                numa_nodes=nodes,
                gpu=gpu,
                description=f"{how} local to GPU {gpu.index} ({gpu.name}) on {where}",
                bind=True,
                **common,
            )
        # The GPU's locality is unknown or outside our affinity: place by NUMA node instead.

    by_node: list[tuple[int | None, list[tuple[int, ...]]]] = []
    claimed: set[int] = set()
    for node in topology.numa_nodes:
        node_cpus = set(node.cpus)
        mine = [c for c in cores if c[0] in node_cpus and c[0] not in claimed]
        if mine:
            by_node.append((node.index, mine))
            claimed.update(c[0] for c in mine)
    rest = [c for c in cores if c[0] not in claimed]
    if rest:  # no NUMA information (or CPUs outside every node)
        by_node.append((None, rest))
    node_index, node_cores = by_node[worker_index % len(by_node)]
    peers = len(range(worker_index % len(by_node), workers, len(by_node)))
    cpus, how = _share(node_cores, peers, worker_index // len(by_node))
    where = f"NUMA node {node_index}" if node_index is not None else "the machine"
    return Placement(
        cpus=cpus,
        numa_nodes=_nodes_of(topology, cpus),
        gpu=None,
        description=f"{how} on {where} (worker {worker_index + 1} of {workers})",
        bind=True,
        **common,
    )


# ---------------------------------------------------------------- binding


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def apply(placement: Placement) -> None:
    """Bind every thread of this process to `placement.cpus`; no-op when not binding.

    `os.sched_setaffinity(0, …)` alone moves only the calling thread on Linux, and threads
    that libraries already started (BLAS pools, aiokafka/CUDA helpers) would stay unbound,
    so each task of the process is set. Threads created afterwards inherit the mask.
    """
    if not placement.bind:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("CPU binding needs os.sched_setaffinity (Linux); use --cpu-bind none")
    cpus = set(placement.cpus)
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread exited meanwhile
            continue
    os.sched_setaffinity(0, cpus)


def bind_current_thread(cpus: tuple[int, ...] | list[int] | set[int]) -> None:
    """Bind only the calling thread — e.g. a ThreadPoolExecutor `initializer` that pins a
    pool to a narrower set than the process."""
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("CPU binding needs os.sched_setaffinity (Linux)")
    os.sched_setaffinity(0, set(cpus))
