"""CPU placement: the decision on hand-built topologies, discovery on this machine, and
real binding checked with `os.sched_getaffinity` in child processes (so pytest itself is
never re-bound)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from streams.ops import placement as pl
from streams.ops.placement import Core, Gpu, NumaNode, Package, Topology, discover, plan

REPO = Path(__file__).resolve().parents[2]
AFFINITY = sorted(os.sched_getaffinity(0))


def small() -> Topology:
    """One node, two cores, no SMT (like this CI box)."""
    return Topology(
        source="hwloc",
        allowed=(0, 1),
        packages=(Package(0, (0, 1)),),
        numa_nodes=(NumaNode(0, (0, 1)),),
        cores=(Core(0, (0,)), Core(1, (1,))),
    )


def two_nodes(gpus: tuple[Gpu, ...] = (), allowed: tuple[int, ...] = tuple(range(16))) -> Topology:
    """2 sockets = 2 NUMA nodes x 4 cores x 2 SMT; core i has PUs i and i+8 (Linux style)."""
    node0 = (0, 1, 2, 3, 8, 9, 10, 11)
    node1 = (4, 5, 6, 7, 12, 13, 14, 15)
    return Topology(
        source="hwloc",
        allowed=allowed,
        packages=(Package(0, node0), Package(1, node1)),
        numa_nodes=(NumaNode(0, node0), NumaNode(1, node1), NumaNode(2, ())),  # 2: CXL memory
        cores=tuple(Core(i, (i, i + 8)) for i in range(8)),
        gpus=gpus,
    )


GPU1 = Gpu(0, "cuda0", "0000:81:00.0", (1,), (4, 5, 6, 7, 12, 13, 14, 15))


def cpus_of(topo: Topology, workers: int, **kw: Any) -> list[set[int]]:
    return [
        set(plan(topo, "auto", worker_index=i, workers=workers, **kw).cpus) for i in range(workers)
    ]


# ------------------------------------------------------------------ plan(): none / lists


def test_none_does_not_bind_and_reports_the_current_affinity() -> None:
    p = plan(two_nodes(), "none")
    assert not p.bind
    assert p.cpus == tuple(range(16))
    assert p.numa_nodes == (0, 1)
    assert p.gpu is None


def test_explicit_list_is_parsed_and_sorted() -> None:
    p = plan(two_nodes(), " 9,0,2-3,3 ")
    assert p.bind
    assert p.cpus == (0, 2, 3, 9)
    assert p.numa_nodes == (0,)
    assert p.as_dict()["cpu_list"] == "0,2-3,9"


@pytest.mark.parametrize("bad", ["", " ", "a", "1-", "-1", "3-1", "0,,1", "0;1", "1.5", "0x1"])
def test_malformed_lists_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU list"):
        plan(small(), bad)


def test_cpus_outside_the_allowed_set_are_rejected_with_the_allowed_set() -> None:
    with pytest.raises(ValueError, match=r"CPU\(s\) 2,7 are not available.*allowed: 0-1"):
        plan(small(), "0,2,7")
    topo = two_nodes(allowed=(4, 5, 6, 7))  # e.g. started under taskset -c 4-7
    with pytest.raises(ValueError, match="allowed: 4-7"):
        plan(topo, "0")


def test_worker_index_and_count_are_validated() -> None:
    with pytest.raises(ValueError, match="worker index"):
        plan(small(), "auto", worker_index=2, workers=2)
    with pytest.raises(ValueError, match="workers must be"):
        plan(small(), "auto", workers=0)


def test_cpu_list_round_trip() -> None:
    assert pl.format_cpu_list((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert pl.parse_cpu_list("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    assert pl.format_cpu_list(()) == ""


# ------------------------------------------------------------------ plan(): auto


def test_auto_single_node_single_worker_takes_every_core() -> None:
    p = plan(small(), "AUTO")
    assert p.spec == "auto" and p.bind
    assert p.cpus == (0, 1)
    assert p.numa_nodes == (0,)


def test_auto_two_workers_on_two_cores_get_one_core_each() -> None:
    assert cpus_of(small(), 2) == [{0}, {1}]


def test_auto_without_gpu_starts_on_node_0_with_smt_siblings() -> None:
    p = plan(two_nodes(), "auto")
    assert p.cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert p.numa_nodes == (0,)
    assert p.gpu is None
    assert "NUMA node 0" in p.description


def test_auto_spreads_workers_across_nodes_before_sharing_one() -> None:
    w0, w1 = cpus_of(two_nodes(), 2)
    assert w0 == {0, 1, 2, 3, 8, 9, 10, 11}
    assert w1 == {4, 5, 6, 7, 12, 13, 14, 15}


def test_auto_four_workers_get_two_whole_cores_each() -> None:
    sets = cpus_of(two_nodes(), 4)
    assert sets == [{0, 1, 8, 9}, {4, 5, 12, 13}, {2, 3, 10, 11}, {6, 7, 14, 15}]


def test_auto_eight_workers_get_one_core_with_its_sibling() -> None:
    sets = cpus_of(two_nodes(), 8)
    assert all(len(s) == 2 and max(s) - min(s) == 8 for s in sets)  # (i, i+8): one core


def test_auto_more_workers_than_cores_uses_one_pu_per_core_before_siblings() -> None:
    sets = cpus_of(two_nodes(), 12)  # 6 per node, 4 cores per node
    node0 = [sorted(s) for s in sets[0::2]]
    # first PUs of the 4 cores go to 4 different workers; SMT siblings come after
    assert [s[0] for s in node0[:4]] == [0, 1, 2, 3]
    assert sorted(pu for s in node0 for pu in s) == [0, 1, 2, 3, 8, 9, 10, 11]


@pytest.mark.parametrize("workers", range(1, 21))
def test_auto_sets_are_never_empty_and_disjoint_while_pus_last(workers: int) -> None:
    for topo in (small(), two_nodes()):
        sets = cpus_of(topo, workers)
        assert all(sets), sets
        assert all(s <= set(topo.allowed) for s in sets)
        if workers <= len(topo.allowed):
            assert all(not (a & b) for a, b in combinations(sets, 2)), sets


def test_auto_respects_a_narrowed_affinity() -> None:
    topo = two_nodes(allowed=(5, 6, 13))
    p = plan(topo, "auto")
    assert p.cpus == (5, 6, 13)
    assert p.numa_nodes == (1,)
    assert cpus_of(topo, 2) == [{5, 13}, {6}]


def test_auto_picks_the_numa_node_local_to_the_gpu() -> None:
    p = plan(two_nodes((GPU1,)), "auto")
    assert p.cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert p.numa_nodes == (1,)
    assert p.gpu == GPU1
    assert "GPU 0" in p.description
    doc = p.as_dict()
    assert doc["gpu"]["pci_bus_id"] == "0000:81:00.0"
    assert json.loads(json.dumps(doc)) == doc


def test_auto_workers_sharing_a_gpu_split_its_node() -> None:
    sets = cpus_of(two_nodes((GPU1,)), 2)
    assert sets == [{4, 5, 12, 13}, {6, 7, 14, 15}]


def test_auto_workers_round_robin_over_gpus() -> None:
    gpu0 = Gpu(0, "cuda0", "0000:17:00.0", (0,), (0, 1, 2, 3, 8, 9, 10, 11))
    gpu1 = Gpu(1, "cuda1", "0000:81:00.0", (1,), GPU1.cpus)
    plans = [plan(two_nodes((gpu0, gpu1)), "auto", worker_index=i, workers=2) for i in (0, 1)]
    assert [p.gpu for p in plans] == [gpu0, gpu1]
    assert [p.numa_nodes for p in plans] == [(0,), (1,)]


def test_auto_ignores_the_gpu_when_asked_or_when_its_locality_is_unknown() -> None:
    assert plan(two_nodes((GPU1,)), "auto", prefer_gpu=False).numa_nodes == (0,)
    lost = Gpu(0, "cuda0", None, (), ())
    p = plan(two_nodes((lost,)), "auto")
    assert p.numa_nodes == (0,) and p.gpu is None


def test_auto_on_the_os_fallback_topology() -> None:
    topo = Topology(source="os", allowed=(0, 1, 2))
    assert plan(topo, "auto").cpus == (0, 1, 2)
    assert cpus_of(topo, 3) == [{0}, {1}, {2}]


# ------------------------------------------------------------------ discover()


def test_discover_reads_this_machine_through_hwloc() -> None:
    topo = discover()
    assert topo.source == "hwloc"  # pyhwloc is a pinned dependency
    assert len(topo.cores) >= 1
    assert topo.numa_nodes and topo.packages
    assert set(topo.allowed) <= set(AFFINITY)
    assert {pu for c in topo.cores for pu in c.pus} >= set(topo.allowed)
    for gpu in topo.gpus:
        assert gpu.name
    json.dumps(topo.as_dict())
    assert set(plan(topo, "auto").cpus) <= set(AFFINITY)


def _obj(kind: str, os_index: int, cpus: list[int], node: int, inner: str = "") -> str:
    mask = f"0x{sum(1 << c for c in cpus):08x}"
    nodes = f"0x{1 << node:08x}"
    attrs = (
        f'type="{kind}" os_index="{os_index}" cpuset="{mask}" complete_cpuset="{mask}" '
        f'nodeset="{nodes}" complete_nodeset="{nodes}"'
    )
    if kind == "NUMANode":
        attrs += ' local_memory="1073741824"'
    return f"<object {attrs}>{inner}</object>" if inner else f"<object {attrs}/>"


def _gpu_xml(bus: int, osdevs: str) -> str:
    pci = (
        f'<object type="PCIDev" pci_busid="0000:{bus:02x}:00.0" '
        f'pci_type="0302 [10de:2335] [10de:18be] a1 00" pci_link_speed="0.0">{osdevs}</object>'
    )
    span = f"0000:[{bus:02x}-{bus:02x}]"
    return f'<object type="Bridge" bridge_type="0-1" depth="0" bridge_pci="{span}">{pci}</object>'


def hwloc_xml() -> str:
    """hwloc XML of a 2-socket box (2 cores x 2 SMT each, PUs numbered like Linux does) with
    an H200-like GPU per socket: one seen by the CUDA and NVML plugins (socket 1), one seen
    only on the PCI bus (socket 0, no driver plugin)."""
    packages = []
    for pkg in (0, 1):
        cores = [(2 * pkg + i, [2 * pkg + i, 2 * pkg + i + 4]) for i in (0, 1)]
        pus = sorted(pu for _, core in cores for pu in core)
        inner = _obj("NUMANode", pkg, pus, pkg) + "".join(
            _obj("Core", idx, core, pkg, "".join(_obj("PU", pu, [pu], pkg) for pu in core))
            for idx, core in cores
        )
        if pkg == 0:
            inner += _gpu_xml(0x17, "")
        else:
            inner += _gpu_xml(
                0x81,
                '<object type="OSDev" name="nvml0" subtype="NVML" osdev_type="4"/>'
                '<object type="OSDev" name="cuda0" subtype="CUDA" osdev_type="8"/>',
            )
        packages.append(_obj("Package", pkg, pus, pkg, inner))
    machine = (
        '<object type="Machine" os_index="0" cpuset="0x000000ff" complete_cpuset="0x000000ff" '
        'allowed_cpuset="0x000000ff" nodeset="0x00000003" complete_nodeset="0x00000003" '
        f'allowed_nodeset="0x00000003">{"".join(packages)}</object>'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE topology SYSTEM "hwloc2.dtd">\n'
        f'<topology version="3.0">{machine}</topology>\n'
    )


def from_xml(allowed: set[int]) -> Topology:
    import pyhwloc
    from pyhwloc.topology import TypeFilter

    topo = pyhwloc.from_xml_buffer(hwloc_xml()).set_io_types_filter(TypeFilter.KEEP_IMPORTANT)
    return pl._from_hwloc(topo, allowed)


def test_hwloc_reading_of_numa_nodes_smt_cores_and_gpu_locality() -> None:
    topo = from_xml(set(range(8)))
    assert topo.source == "hwloc"
    assert [n.cpus for n in topo.numa_nodes] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert [c.pus for c in topo.cores] == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert [p.cpus for p in topo.packages] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    # one entry per PCI device; the CUDA name wins over NVML; PCI-only GPUs come last
    assert topo.gpus == (
        Gpu(0, "cuda0", "0000:81:00.0", (1,), (2, 3, 6, 7)),
        Gpu(1, "pci:0000:17:00.0", "0000:17:00.0", (0,), (0, 1, 4, 5)),
    )
    p = plan(topo, "auto")
    assert p.cpus == (2, 3, 6, 7) and p.numa_nodes == (1,) and p.gpu == topo.gpus[0]
    assert plan(topo, "auto", worker_index=1, workers=2).numa_nodes == (0,)


def test_hwloc_reading_intersects_the_process_affinity() -> None:
    topo = from_xml({0, 4, 99})  # 99: not on this machine
    assert topo.allowed == (0, 4)
    assert plan(topo, "auto").cpus == (0, 4)  # the GPU's node is not ours: stay on node 0
    with pytest.raises(ValueError, match="allowed: 0,4"):
        plan(topo, "2")


def test_discover_falls_back_to_the_os_view(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Topology:
        raise RuntimeError("no hwloc here")

    monkeypatch.setattr(pl, "_hwloc_topology", broken)
    topo = discover()
    assert topo.source == "os"
    assert topo.allowed == tuple(AFFINITY)
    assert [c.pus for c in topo.cores] == [(cpu,) for cpu in AFFINITY]


# ------------------------------------------------------------------ real binding


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run `code` in a fresh interpreter at the repo root; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHILD = """
    import json, os, sys, threading
    from streams.ops.placement import apply, discover, plan

    # a thread started BEFORE binding, like a BLAS pool started at import time
    go, seen = threading.Event(), {}
    def early():
        go.wait()
        seen["early"] = sorted(os.sched_getaffinity(0))
    t0 = threading.Thread(target=early); t0.start()

    p = plan(discover(), sys.argv[1])
    apply(p)
    go.set(); t0.join()
    def late():
        seen["late"] = sorted(os.sched_getaffinity(0))
    t1 = threading.Thread(target=late); t1.start(); t1.join()
    print(json.dumps({"planned": list(p.cpus), "main": sorted(os.sched_getaffinity(0)), **seen}))
"""


@pytest.mark.parametrize("spec", ["0", "auto", str(AFFINITY[-1]), "none"])
def test_apply_binds_every_thread_of_the_process(spec: str) -> None:
    got = run_child(CHILD, spec)
    expected = AFFINITY if spec == "none" else got["planned"]
    if spec not in {"auto", "none"}:
        assert got["planned"] == [int(spec)]
    assert got["main"] == expected
    assert got["early"] == expected
    assert got["late"] == expected


def test_bind_current_thread_only_moves_the_calling_thread() -> None:
    got = run_child(
        """
        import json, os, threading
        from streams.ops.placement import bind_current_thread
        seen = {}
        def worker():
            bind_current_thread([0])
            seen["thread"] = sorted(os.sched_getaffinity(0))
        t = threading.Thread(target=worker); t.start(); t.join()
        print(json.dumps({"main": sorted(os.sched_getaffinity(0)), **seen}))
        """
    )
    assert got == {"thread": [0], "main": AFFINITY}


def test_cli_binding_path_sets_the_affinity() -> None:
    got = run_child(
        """
        import json, os, sys
        from streams.cli.pipeline import bind_from_cli, placement_path
        p = bind_from_cli(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
        print(json.dumps({"planned": list(p.cpus), "now": sorted(os.sched_getaffinity(0)),
                          "pid": os.getpid(), "path": str(placement_path(os.getpid())),
                          "doc": p.as_dict()}))
        """,
        "auto",
        str(len(AFFINITY) - 1),
        str(len(AFFINITY)),
    )
    assert got["now"] == got["planned"] == [AFFINITY[-1]]  # last worker: last core
    assert got["path"] == str(
        Path(tempfile.gettempdir()) / f"sepstream-placement-{got['pid']}.json"
    )
    assert got["doc"]["spec"] == "auto" and got["doc"]["workers"] == len(AFFINITY)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cpu-bind", "4096"], {}, "not available to this process"),
        ([], {"SEPSTREAM_CPU_BIND": "0-x"}, "invalid CPU list"),
        (["--worker-index", "3", "--workers", "2"], {}, "is not below --workers 2"),
    ],
)
def test_worker_command_rejects_bad_placement_before_touching_kafka(
    args: list[str], env: dict[str, str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
