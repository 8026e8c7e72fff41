"""Benchmark: ``ucofia-run index`` single-process vs ``--ray`` (local, and two simulated nodes on this
machine), per-stage time and utilisation, and a model of indexing 10^6 videos on N GPU nodes.

The shared real clips (``common.SHARED``: 24 MSR-VTT 1k-A + 6 assorted) are repeated to ``--videos``
list entries (ids ``r03_video7020``, unique) and indexed with a ViT-B/32-geometry bundle (random
weights, exported once and cached in ``--work``) exactly as a user runs the CLI, each mode into a
fresh index directory:

* ``single``: ``ucofia-run index --bundle B --videos LIST -o OUT --batch-size 16`` (decoding in a
  thread pool overlapping the onnxruntime encoder);
* ``ray_local``: the same plus ``--ray --ray-cpus 2`` (Ray started by the command; every other Ray
  setting at the CLI's default, e.g. decode tasks of ``RayOptions.decode_batch`` videos);
* ``two_nodes``: a ``ray.cluster_utils.Cluster`` of two nodes of 1 CPU each on this machine (the two
  cores shared out, the same 2 CPUs of Ray resources as ``ray_local``; 1 GiB object store each),
  then the same command with ``--ray --ray-address <the cluster's address>``.

Every mode runs inside its own network + PID namespace (``unshare -n -p -f --mount-proc``, only the
loopback interface up): Ray binds 127.0.0.1, nothing can reach another address, and every process
of a mode dies with it. The script re-executes itself there (``--inner``) and records the Ray node
addresses (``ray.nodes()``; the raylets' ``--node_ip_address``) and every TCP peer address seen in
the namespace. Modes alternate order between rounds so that machine noise hits them alike.

Reported per mode: the wall time of the whole command (Python start, Ray start-up and shutdown
included) and the pipeline time (Ray: the ``ray:`` summary line, start-up excluded; single: the
``indexed ...`` line's encode loop), videos/s of both, ratios to single; for Ray the worker seconds
per stage (decode / encode / shard writes, driver commits) and stage utilisation = worker seconds /
(pipeline wall x workers of the stage); CPU seconds per process kind in the namespace (sampled from
/proc: the driver, raylet, GCS, decode workers, the encoder actor, other Ray workers and services),
which shows where Ray's overhead goes. The indexes of all modes are compared (ids, entries,
features).

The model (``modelled``, not measured): hours to index 10^6 videos on N nodes of 1 GPU + 16 cores,
from the measured single-core decode cost per video of these clips (decode + file hash, what a Ray
decode task does), the measured host-side cost per video of the encoder actor (uint8 -> float
frames, one core; a GPU actor holds ``pipeline.GPU_ACTOR_CPUS`` CPUs and converts on that many
threads, modelled as the one-core cost / threads, then the GPU call, in turn: an actor handles one
batch at a time), the shard writes, the driver CPU per video at the shipped decode batch (the Ray
engine alone, measured here), and a GPU encode rate read from
``benchmarks/results/gpu_check_h100.json`` (ViT-B/32 video encoder, fp32, batch of 384 frames on a
lent H100: ~4,300 frames/s = ~360 videos/s of 12 frames). Variants: as shipped; as shipped with
``--ray-decode-batch`` at 4x the default (a CLI option); and a HYPOTHETICAL use, one ``index --ray``
job per node on its part of the list (a driver each) merged with ``ucofia-run merge`` (the merge is
not modelled).

    .venv/bin/python benchmarks/ingest_scale.py --work runs/ingest_scale \\
        -o benchmarks/results/ingest_scale_vit_b32.json
    .venv/bin/python benchmarks/ingest_scale.py --config tiny --videos 20   # smoke check (~1 min)
"""
from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

REPO = common.REPO
VENV_BIN = Path(sys.executable).parent
MODES = ("single", "ray_local", "two_nodes")
RAY_CPUS = 2
TARGET_RAY_LOCAL = 0.85
NODE_CORES = 16
NODE_COUNTS = (1, 4, 16, 64)
VIDEOS_TO_MODEL = 10 ** 6
ENGINE_SLEEP = 0.05  # s per item in the engine's sleep-bound run: at most 20 items/s on one decode CPU
# RayOptions.decode_batch before commit 0399f21 (the engine measures it beside the shipped one)
EARLIER_DECODE_BATCH = 2


def engine_decode_batches(shipped: int) -> tuple[int, ...]:
    """Decode batches the engine runs at: the earlier default, the shipped one, 4x the shipped one."""
    return tuple(sorted({EARLIER_DECODE_BATCH, shipped, 4 * shipped}))
GPU_RESULT = common.RESULTS / "gpu_check_h100.json"
GPU_FRAMES_PER_S_FALLBACK = 4300.0  # the README's figure for the same run
# The indexing use case (what `ucofia-run index` runs) in a child process of its own, so that its
# CPU time is measured apart; it writes its typed outcome as JSON.
INDEX_DRIVER = """
import json, sys
from pathlib import Path
from runtime.ingest import IndexRequest, RaySettings, build_index
spec = json.loads(sys.argv[1])
ray = None if spec["ray"] is None else RaySettings(**spec["ray"])
outcome = build_index(IndexRequest(bundle=Path(spec["bundle"]), videos=Path(spec["videos"]), out=Path(spec["index"]),
                                   batch_size=spec["batch_size"], thumbnails=False, ray=ray))
Path(spec["outcome"]).write_text(json.dumps(outcome.to_dict()))
"""
# Inside the namespace: loopback up; a private tmpfs on /tmp/ray (Ray's session files and the
# ray_current_cluster address file that cluster_utils writes, which a bare ray.init() of any other
# process on the machine would otherwise pick up and try to join).
NAMESPACE = ("ip link set lo up || exit 97; mkdir -p /tmp/ray && mount -t tmpfs -o mode=1777 tmpfs /tmp/ray "
             "|| exit 98; \"$0\" \"$@\"; exit $?")


# ------------------------------------------------------------------------------------------------
# inside the namespace
# ------------------------------------------------------------------------------------------------
def _proc_sample(pid: str) -> tuple[float, int, str] | None:
    """(CPU seconds, threads, command line) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[17]), cmd


def _tcp_peers() -> set[str]:
    """Local and remote IPv4/IPv6 addresses of every TCP socket in this network namespace."""
    out: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            for endpoint in parts[1:3]:
                hexaddr = endpoint.split(":")[0]
                if len(hexaddr) == 8:
                    raw = bytes.fromhex(hexaddr)[::-1]
                    out.add(".".join(str(b) for b in raw))
                else:  # IPv6: four little-endian 32-bit words
                    raw = b"".join(bytes.fromhex(hexaddr[i:i + 8])[::-1] for i in range(0, 32, 8))
                    out.add(str(ipaddress.IPv6Address(raw)))
    return out


SERVICES = "Ray services (dashboard, agents, monitors)"
ROLES = (  # (needle in a command line, process kind), most specific first
    ("ip link set lo up", "namespace shell"), ("build_index", "driver (ucofia-run)"), ("ShardEncoder", "encoder actor"),
    ("EngineEncoder", "encoder actor"),
    ("decode_batch", "decode task workers"), ("engine_decode", "decode task workers"), ("gcs_server", "GCS"),
    ("/raylet", "raylet"), ("DashboardAgent", SERVICES), ("RuntimeEnvAgent", SERVICES), ("dashboard", SERVICES),
    ("runtime_env", SERVICES), ("log_monitor", SERVICES), ("monitor.py", SERVICES),
    ("ray::", "other Ray workers (idle, Ray Data's)"), ("ray", SERVICES))


def _role(titles: set[str]) -> str:
    """What a process of the namespace was, from the command lines it showed."""
    text = " | ".join(titles)
    return next((role for needle, role in ROLES if needle in text), "other")


def _name(titles: set[str]) -> str:
    """A short name for a process: its most specific Ray title, else its program and first argument."""
    ray_titles = sorted((t for t in titles if t.startswith("ray::") and t != "ray::IDLE"), key=len)
    if ray_titles:
        return ray_titles[0][:80]
    for title in sorted(titles):
        words = title.split()
        if words:
            return " ".join(Path(w).name for w in words[:2])[:80]
    return "?"


class ProcSampler:
    """Samples every process of the (PID) namespace: CPU seconds per process, the command lines
    each showed, the raylets' node addresses, TCP addresses; per-process CPU time series (coarse)
    to locate the pipeline window."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.own = interval, str(os.getpid())
        self.cpu: dict[str, float] = {}
        self.titles: dict[str, set[str]] = {}
        self.threads: dict[str, int] = {}
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.addresses: set[str] = set()
        self.node_ips: set[str] = set()
        self.baseline: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.start = time.perf_counter()

    def _once(self, net: bool) -> None:
        now = time.perf_counter() - self.start
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == self.own:
                continue
            sample = _proc_sample(pid)
            if sample is None:
                continue
            seconds, threads, cmd = sample
            self.cpu[pid] = seconds
            self.threads[pid] = max(threads, self.threads.get(pid, 0))
            if cmd:
                self.titles.setdefault(pid, set()).add(cmd[:300])
                for match in re.finditer(r"--node[_-]ip[_-]address[= ](\S+)", cmd):
                    self.node_ips.add(match.group(1))
            series = self.series.setdefault(pid, [])
            if not series or series[-1][1] != seconds:
                series.append((round(now, 2), seconds))
        if net:
            self.addresses |= _tcp_peers()

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            self._once(net=n % 8 == 0)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcSampler:
        self._once(net=True)
        self.baseline = dict(self.cpu)  # processes already running (a cluster's): count only what follows
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for pid, seconds in self.cpu.items():
            role = _role(self.titles.get(pid, set()))
            item = out.setdefault(role, {"cpu_seconds": 0.0, "processes": 0, "max_threads": 0, "titles": []})
            item["cpu_seconds"] += seconds - self.baseline.get(pid, 0.0)
            item["processes"] += 1
            item["max_threads"] = max(item["max_threads"], self.threads.get(pid, 0))
            for title in sorted(self.titles.get(pid, set())):
                short = title[:120]
                if short not in item["titles"] and len(item["titles"]) < 6:
                    item["titles"].append(short)
            own = round(seconds - self.baseline.get(pid, 0.0), 2)
            item.setdefault("top", []).append([own, _name(self.titles.get(pid, set()))])
        for item in out.values():
            item["cpu_seconds"] = round(item["cpu_seconds"], 2)
            item["top"] = sorted(item["top"], reverse=True)[:6]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_seconds"]))

    def active_window(self, role: str) -> tuple[float, float] | None:
        """First and last time a process of ``role`` gained CPU (the sampler's clock)."""
        times = [t for pid, series in self.series.items() if _role(self.titles.get(pid, set())) == role
                 for t, _ in series[1:]]
        return (min(times), max(times)) if times else None

    def cpu_between(self, role: str, t0: float, t1: float) -> float:
        """CPU seconds processes of ``role`` used between t0 and t1 (sampler's clock, linear interpolation)."""
        total = 0.0
        for pid, series in self.series.items():
            if _role(self.titles.get(pid, set())) != role or not series:
                continue

            def at(t: float) -> float:
                if t <= series[0][0]:  # before its first sample: counted from there
                    return series[0][1]
                for (ta, ca), (tb, cb) in itertools.pairwise(series):
                    if ta <= t <= tb:
                        return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
                return series[-1][1]
            total += at(t1) - at(t0)
        return total


def _interfaces() -> list[str]:
    """Network interfaces of this network namespace (/proc/net/dev is per namespace)."""
    try:
        return sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    except OSError:
        return []


def _start_two_nodes(object_store: int) -> tuple[Any, dict[str, Any]]:
    import logging

    import ray
    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": object_store, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=object_store)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    nodes = [{"address": n["NodeManagerAddress"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU")}
             for n in ray.nodes()]
    ray.shutdown()  # this driver only; the cluster's nodes keep running for the command
    return cluster, {"address": cluster.address, "nodes": nodes, "start_seconds": round(time.perf_counter() - start, 2)}


def _probe_local_nodes() -> dict[str, Any]:
    """A local Ray started the way the CLI starts it (here, before the timed command): its nodes."""
    import logging

    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    nodes = [{"address": n["NodeManagerAddress"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU")}
             for n in ray.nodes()]
    ray.shutdown()
    return {"nodes": nodes, "probe_seconds": round(time.perf_counter() - start, 2)}


def _stderr_notes(text: str) -> list[str]:
    """Lines of the command's stderr worth reading (progress-bar redraws dropped)."""
    notes = []
    for line in re.split(r"[\r\n]+", text):
        line = line.strip()
        if not line or re.search(r"\d+/\d+ \[", line) or line.startswith("encoding"):
            continue
        if line not in notes:
            notes.append(line[:400])
    return notes[:40]


def machine_busy() -> tuple[float, float]:
    """(wall clock, non-idle CPU seconds of the whole machine: /proc/stat is not per namespace)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return time.perf_counter(), (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Load:
    """Cores busy on the machine, and those not ours (everything but this namespace), over a span."""

    def __init__(self) -> None:
        self.wall0, self.busy0 = machine_busy()
        self.self0 = _self_cpu()

    def result(self, namespace_cpu: float) -> dict[str, Any]:
        wall1, busy1 = machine_busy()
        ours = namespace_cpu + _self_cpu() - self.self0
        span = max(wall1 - self.wall0, 1e-9)
        return {"machine_cores_busy": round((busy1 - self.busy0) / span, 2),
                "this_benchmark_cores_busy": round(ours / span, 2),
                "other_processes_cores_busy": round(max(0.0, busy1 - self.busy0 - ours) / span, 2)}


def run_inner(spec: dict[str, Any]) -> dict[str, Any]:
    """One mode, inside the namespace: start what it needs, run the CLI, measure."""
    mode = spec["mode"]
    if mode == "ray_engine":
        return run_engine(spec)
    out: dict[str, Any] = {"mode": mode, "interfaces": _interfaces()}
    cluster = None
    equivalent = ["ucofia-run", "index", "--bundle", spec["bundle"], "--videos", spec["videos"], "-o", spec["index"],
                  "--batch-size", str(spec["batch_size"]), "--no-thumbnails"]
    ray: dict[str, Any] | None = None
    if mode == "ray_local":
        out["ray_probe"] = _probe_local_nodes()
        ray = {"cpus": RAY_CPUS}
        equivalent += ["--ray", "--ray-cpus", str(RAY_CPUS)]
    elif mode == "two_nodes":
        cluster, out["cluster"] = _start_two_nodes(spec["object_store_bytes"])
        ray = {"address": out["cluster"]["address"]}
        equivalent += ["--ray", "--ray-address", out["cluster"]["address"]]
    out["command"] = shlex.join(equivalent)
    outcome_file = Path(spec["index"]).with_name(Path(spec["index"]).name + ".outcome.json")
    driver_spec = {**{k: spec[k] for k in ("bundle", "videos", "index", "batch_size")}, "ray": ray,
                   "outcome": str(outcome_file)}
    cmd = [sys.executable, "-c", INDEX_DRIVER, json.dumps(driver_spec)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        with ProcSampler() as sampler:
            load = _Load()
            out["load_average_before"] = common.load_average()
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            sampler._once(net=True)
            roles = sampler.by_role()
            out.update(load.result(sum(r["cpu_seconds"] for r in roles.values())))
            out["load_average_after"] = common.load_average()
    finally:
        if cluster is not None:
            cluster.shutdown()
    out.update(returncode=proc.returncode, command_wall_seconds=round(wall, 2),
               stdout_tail=proc.stdout[-2000:], stderr_notes=_stderr_notes(proc.stderr))
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-4000:]
        return out
    outcome = json.loads(outcome_file.read_text())
    out["indexed_line"] = {"videos": outcome["indexed"], "videos_per_second": round(outcome["per_second"], 3),
                           "seconds": round(outcome["seconds"], 2)}
    times = outcome["ray"]
    if times and times["videos"]:
        out["ray_summary"] = {**{k: times[k] for k in ("videos", "wall", "nodes", "encoders", "attempts", "decode",
                                                        "encode", "write", "commit")},
                              "rate": times["videos"] / times["wall"] if times["wall"] > 0 else 0.0,
                              "kind": "GPU" if times["use_gpu"] else "CPU"}
    out["cpu_seconds_by_process"] = roles
    out["cpu_seconds_namespace_total"] = round(sum(r["cpu_seconds"] for r in roles.values()), 2)
    out["ray_node_addresses_from_raylets"] = sorted(sampler.node_ips)
    out["tcp_addresses_seen"] = sorted(sampler.addresses)
    window = sampler.active_window("encoder actor") if mode != "single" else None
    if window:
        w0, w1 = window
        out["pipeline_window_seconds"] = round(w1 - w0, 2)
        out["cpu_seconds_in_pipeline_window"] = {
            role: round(sampler.cpu_between(role, w0, w1), 2) for role in roles}
    return out


def engine_decode(batch: dict[str, Any], shape: tuple[int, ...], sleep: float = 0.0) -> dict[str, Any]:
    """A decode task that decodes nothing (or sleeps ``sleep`` s per item): zero frames of the real
    shape (what the object store carries)."""
    import numpy as np

    time.sleep(sleep * len(batch["id"]))
    return {"id": batch["id"], "frames": np.zeros((len(batch["id"]), *shape), np.uint8)}


class EngineEncoder:
    """An encoder actor that encodes nothing: drops the frames, returns the ids."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"id": batch["id"]}


def run_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ray engine alone: the index pipeline's shape (items -> decode tasks of RayOptions.decode_batch
    videos, 1 CPU each -> one encoder actor of 1 CPU, batches of --batch-size -> the driver) with
    stages that do no work but carry frame-sized uint8 arrays. Its rate is the engine's ceiling on
    this machine; its CPU per item the engine's overhead per video. Runs: a warm-up (starts the
    workers), N and 3N items at the shipped decode batch (the difference gives the marginal cost per
    item, without the per-dataset set-up), 3N items at each other decode batch of ENGINE_DECODE_BATCHES
    (the earlier default 2; 4x the shipped one: fewer, larger tasks), N items whose decode tasks sleep
    ENGINE_SLEEP s per item at the shipped decode batch (a slow pipeline: does the driver's CPU follow
    the items or the clock?)."""
    import logging
    import math

    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from runtime.bundle import load_bundle
    from runtime.distributed.pipeline import DECODE_TASK_MEMORY, RayOptions
    from ucofia.data.video import VideoSpec

    video = VideoSpec.from_config(load_bundle(spec["bundle"]).config)
    shape = (video.max_frames, video.image_size, video.image_size, 3)
    shipped, n = RayOptions().decode_batch, spec["engine_items"]
    other_batches = sorted({b for b in engine_decode_batches(shipped) if b != shipped})
    plan = [("warm_up", max(32, n // 5), shipped, 0.0), ("n", n, shipped, 0.0), ("3n", 3 * n, shipped, 0.0),
            *[(f"3n_decode_batch_{b}", 3 * n, b, 0.0) for b in other_batches],
            ("n_sleep_bound", n, shipped, ENGINE_SLEEP)]
    out: dict[str, Any] = {"mode": "ray_engine", "interfaces": _interfaces(), "shipped_decode_batch": shipped,
                           "batch_size": spec["batch_size"], "frames_shape": list(shape)}
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        out["nodes"] = [{"address": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        runs: dict[str, Any] = {}
        for label, items, per_task, sleep in plan:
            with ProcSampler() as sampler:
                load = _Load()
                cpu0, start = _self_cpu(), time.perf_counter()
                ds = ray.data.from_items([{"id": f"v{i}"} for i in range(items)],
                                         override_num_blocks=math.ceil(items / per_task))
                ds = ds.map_batches(engine_decode, fn_kwargs={"shape": shape, "sleep": sleep}, batch_size=per_task,
                                    batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
                ds = ds.map_batches(EngineEncoder, batch_size=spec["batch_size"], batch_format="numpy",
                                    compute=ActorPoolStrategy(min_size=1, max_size=1), num_cpus=1)
                rows = sum(len(b["id"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
                wall, driver = time.perf_counter() - start, _self_cpu() - cpu0
                sampler._once(net=True)
                roles = sampler.by_role()
                busy = load.result(sum(r["cpu_seconds"] for r in roles.values()))
            others = sum(r["cpu_seconds"] for r in roles.values())
            runs[label] = {"rows": rows, "decode_batch": per_task, "decode_sleep_s_per_item": sleep,
                           "wall_seconds": round(wall, 2), "driver_cores_busy": round(driver / wall, 3),
                           "items_per_second": round(rows / wall, 1), "driver_cpu_seconds": round(driver, 2),
                           "driver_cpu_ms_per_item": round(1e3 * driver / rows, 2),
                           "workers_and_services_cpu_seconds": round(others, 2),
                           "total_cpu_ms_per_item": round(1e3 * (driver + others) / rows, 2),
                           "cpu_seconds_by_process": roles, **busy}
            out["tcp_addresses_seen"] = sorted(set(out.get("tcp_addresses_seen", [])) | sampler.addresses)
            out["ray_node_addresses_from_raylets"] = sorted(
                set(out.get("ray_node_addresses_from_raylets", [])) | sampler.node_ips)
        out["runs"] = runs
        a, b = runs["n"], runs["3n"]
        extra = b["rows"] - a["rows"]
        fast, slow = runs["3n"], runs["n_sleep_bound"]
        slope = (fast["driver_cores_busy"] - slow["driver_cores_busy"]) / max(
            fast["items_per_second"] - slow["items_per_second"], 1e-9)
        base = slow["driver_cores_busy"] - slope * slow["items_per_second"]
        by_batch = {str(shipped): round(1e3 * slope, 2)}
        for size in other_batches:  # the same clock part; the rest of the driver's CPU follows the items
            run = runs[f"3n_decode_batch_{size}"]
            by_batch[str(size)] = round(1e3 * (run["driver_cores_busy"] - base) / run["items_per_second"], 2)
        out["driver_fit"] = {
            "what": "driver cores busy = clock_cores + cpu_s_per_item x items/s, through the full-speed (3n) and the "
                    "sleep-bound run at the shipped decode batch: the part that follows the clock (the executor's "
                    "polling) and the part that follows the items (task submission, actor calls, receiving "
                    "batches); at the other decode batches, (cores busy - clock_cores) / items/s of their 3n run",
            "decode_batch": shipped, "clock_cores": round(base, 3), "cpu_ms_per_item": round(1e3 * slope, 2),
            "cpu_ms_per_item_by_decode_batch": dict(sorted(by_batch.items(), key=lambda kv: int(kv[0])))}
        out["marginal_per_item"] = {
            "driver_cpu_ms": round(1e3 * (b["driver_cpu_seconds"] - a["driver_cpu_seconds"]) / extra, 2),
            "total_cpu_ms": round((b["total_cpu_ms_per_item"] * b["rows"] - a["total_cpu_ms_per_item"] * a["rows"])
                                  / extra, 2),
            "wall_ms_on_2_cpus": round(1e3 * (b["wall_seconds"] - a["wall_seconds"]) / extra, 2)}
    finally:
        ray.shutdown()
    out["returncode"] = 0
    return out


# ------------------------------------------------------------------------------------------------
# outside: bundle, list, probes, the modes, checks, the model
# ------------------------------------------------------------------------------------------------
def check_namespace() -> None:
    """Fail clearly when this machine does not let us make a network + PID namespace."""
    probe = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", NAMESPACE, "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(
            "this benchmark runs every Ray process inside its own network + PID namespace so that Ray binds only "
            "127.0.0.1 and nothing it starts outlives a mode, but `unshare -n -p -f --mount-proc` is not permitted "
            f"here (exit {probe.returncode}: {probe.stderr.strip()[:300]}). Run it as root or with CAP_SYS_ADMIN "
            "(e.g. in a container started with --cap-add SYS_ADMIN), with util-linux's unshare and iproute2's ip "
            "on PATH.")


def cached_bundle(work: Path, config_name: str, given: Path | None) -> Path:
    """The bundle to index with: ``given``, else one exported once into ``work`` and reused."""
    if given is not None:
        return given.resolve()
    target = work / f"bundle_{config_name}"
    if (target / "manifest.json").is_file():
        print(f"[bundle] reusing {target}", file=sys.stderr)
        return target
    import ucofia
    from export import export_bundle

    tmp = work / f".bundle_{config_name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    export_bundle(ucofia.build_model(common.config(config_name), seed=0), tmp)
    tmp.rename(target)
    return target


def write_list(work: Path, clips: list[Path], count: int) -> Path:
    """``id<TAB>path`` lines: the clips repeated to ``count`` entries, ids ``r03_video7020``."""
    lines = [f"r{i // len(clips):02d}_{clips[i % len(clips)].stem}\t{clips[i % len(clips)].resolve()}"
             for i in range(count)]
    path = work / f"videos_{count}.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def clip_facts(clips: list[Path]) -> dict[str, Any]:
    """Duration, resolution and size of the clips (what the decode cost depends on)."""
    import av

    durations, sizes, shapes = [], [], {}
    for clip in clips:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            if container.duration:
                durations.append(container.duration / 1e6)
            key = f"{stream.codec_context.width}x{stream.codec_context.height}"
            shapes[key] = shapes.get(key, 0) + 1
        sizes.append(clip.stat().st_size)
    return {"clips": len(clips), "mean_duration_s": round(statistics.mean(durations), 2),
            "min_max_duration_s": [round(min(durations), 2), round(max(durations), 2)],
            "mean_file_mib": round(statistics.mean(sizes) / 2**20, 2), "resolutions": shapes}


def decode_probe(bundle_dir: Path, clips: list[Path], batch_size: int) -> dict[str, Any]:
    """Single-core cost per video: ``stages.decode_batch`` (what a Ray decode task runs: decode with
    one thread + sha256 of the file) over the clips in batches of the shipped decode batch, wall and
    thread CPU; plus the encoder actor's host-side frame conversion (uint8 -> normalised float32,
    ``to_model_input``) on one core, and the actor's own batch conversion
    (``ShardEncoder._model_input``) of ``batch_size`` videos on 1 thread and on as many threads as a
    GPU actor uses (at most this machine's cores), wall time: do the threads scale?"""
    import numpy as np

    from runtime.bundle import load_bundle
    from runtime.distributed.pipeline import RayOptions
    from runtime.distributed.stages import decode_batch
    from ucofia.data.video import VideoSpec, to_model_input

    spec = VideoSpec.from_config(load_bundle(bundle_dir).config)
    walls, cpus, converts, kept = [], [], [], []
    per_task = RayOptions().decode_batch
    for b0 in range(0, len(clips), per_task):
        part = clips[b0:b0 + per_task]
        batch = {"id": np.asarray([p.stem for p in part], dtype=object),
                 "path": np.asarray([str(p) for p in part], dtype=object)}
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        out = decode_batch(batch, spec)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.thread_time() - cpu0)
        for i in range(len(part)):
            if out["error"][i]:
                raise SystemExit(f"decode failed: {out['error'][i]}")
            c0 = time.thread_time()
            to_model_input(out["frames"][i], out["video_mask"][i], spec)
            converts.append(time.thread_time() - c0)
            if len(kept) < batch_size:
                kept.append((out["frames"][i], out["video_mask"][i]))
    n = len(clips)
    return {"videos": n, "decode_batch": per_task, "wall_s_per_video": round(sum(walls) / n, 4),
            "cpu_s_per_video": round(sum(cpus) / n, 4),
            "to_model_input_cpu_s_per_video": round(sum(converts) / n, 5),
            "encoder_actor_conversion": convert_probe(np.stack([f for f, _ in kept]), np.stack([m for _, m in kept]),
                                                      spec),
            "frames": [spec.max_frames, spec.image_size, spec.image_size, 3]}


def convert_probe(frames: Any, masks: Any, spec: Any, repeats: int = 3) -> dict[str, Any]:
    """``ShardEncoder._model_input`` (the encoder actor's frame conversion, its own code) over one
    batch, on 1 thread and on min(GPU_ACTOR_CPUS, cores) threads: wall seconds per video (best of
    ``repeats``). Only a check that the threads scale here; the model divides the one-core cost by
    GPU_ACTOR_CPUS."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from runtime.distributed.pipeline import GPU_ACTOR_CPUS
    from runtime.distributed.stages import ShardEncoder

    rows = list(range(len(frames)))
    counts = sorted({1, max(1, min(GPU_ACTOR_CPUS, os.cpu_count() or 1))})
    per_video: dict[str, float] = {}
    for threads in counts:
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        actor = SimpleNamespace(_convert=pool, spec=spec)  # what _model_input reads of the actor
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            ShardEncoder._model_input(actor, frames, masks, rows)
            best = min(best, time.perf_counter() - start)
        if pool is not None:
            pool.shutdown()
        per_video[str(threads)] = round(best / len(rows), 5)
    top = str(counts[-1])
    return {"videos": len(rows), "gpu_actor_cpus": GPU_ACTOR_CPUS, "wall_s_per_video_by_threads": per_video,
            "speedup": round(per_video["1"] / per_video[top], 2), "threads_measured": counts[-1]}


def run_mode(mode: str, spec: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Run one mode in a fresh namespace (this script again, with --inner)."""
    spec_path = work / f"spec_{mode}.json"
    result_path = work / f"result_{mode}.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "mode": mode, "result": str(result_path)}))
    cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", NAMESPACE,
           sys.executable, str(Path(__file__).resolve()), "--inner", str(spec_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode in (97, 98):
        what = "bring the loopback interface up" if proc.returncode == 97 else "mount a private tmpfs on /tmp/ray"
        raise SystemExit(f"could not {what} inside the namespace: {proc.stderr[-500:]}")
    if not result_path.is_file():
        raise SystemExit(f"mode {mode}: no result (exit {proc.returncode}); stderr:\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    if result.get("returncode") != 0:
        raise SystemExit(f"mode {mode}: the command failed (exit {result.get('returncode')}): {result['command']}\n"
                         f"{result.get('stderr_tail', '')}")
    result["namespace_seconds"] = round(time.perf_counter() - start, 2)
    return result


def compare_indexes(reference: Path, other: Path) -> dict[str, Any]:
    """Same ids in the same order, same entries, same features (bitwise, else the largest difference)?
    When only the order differs, rows are matched by id."""
    import numpy as np

    from runtime.index import GalleryIndex

    a, b = GalleryIndex(reference), GalleryIndex(other)
    out: dict[str, Any] = {"rows": [len(a), len(b)], "same_ids": a.ids == b.ids,
                           "same_id_set": set(a.ids) == set(b.ids)}
    if not out["same_id_set"]:
        out.update(same_entries=False, features_equal=False)
        return out
    row_of = {vid: row for row, vid in enumerate(b.ids)}
    rows = np.asarray([row_of[vid] for vid in a.ids])
    entries_b = b.entries
    out["same_entries"] = a.entries == [entries_b[r] for r in rows]
    fa, fb = a.features(0, len(a)), b.gather(rows)
    out["features_bitwise_equal"] = all(np.array_equal(fa[r], fb[r]) for r in fa)
    out["features_max_abs_diff"] = float(max(np.max(np.abs(fa[r] - fb[r])) if fa[r].size else 0.0 for r in fa))
    out["features_equal"] = out["features_bitwise_equal"] or out["features_max_abs_diff"] <= 1e-5
    return out


def gpu_encode_rate(frames_per_video: int) -> dict[str, Any]:
    """Videos/s per GPU for the ViT-B/32 video encoder from the lent H100's gpu_check result."""
    source, frames_per_s, fp16 = str(GPU_RESULT.relative_to(REPO)), None, None
    try:
        enc = json.loads(GPU_RESULT.read_text())["encoders"]
        frames_per_s = float(enc["torch_cuda_fp32"]["video_384_frames_per_s"])
        fp16 = float(enc["torch_cuda_fp16"]["video_384_frames_per_s"])
        key = "encoders.torch_cuda_fp32.video_384_frames_per_s"
    except (OSError, KeyError, ValueError):
        frames_per_s, key = GPU_FRAMES_PER_S_FALLBACK, "fallback: README, 4,300 frames/s"
    return {"source": f"{source}: {key}", "gpu": "NVIDIA H100 80GB HBM3 (lent; torch CUDA, fp32, batch 384 frames)",
            "frames_per_second": frames_per_s, "frames_per_video": frames_per_video,
            "videos_per_second": round(frames_per_s / frames_per_video, 1),
            "fp16_frames_per_second": fp16,
            "fp16_videos_per_second": round(fp16 / frames_per_video, 1) if fp16 else None}


def model(decode_s: float, convert_s: float, write_s: float, actor_cpus: int, driver_s: float | None,
          driver_clock: float, gpu_rate: float, label: str, driver_per_node: bool = False) -> dict[str, Any]:
    """Hours for 10^6 videos on N nodes of 1 GPU + NODE_CORES cores (modelled). ``decode_s``: CPU
    seconds per video of a decode task; ``convert_s``: one core's seconds per video to turn uint8
    frames into the encoder's float input, which a GPU actor of ``actor_cpus`` CPUs spreads over as
    many threads; then the GPU call, then the shard write, one after another (an actor handles one
    batch at a time). ``driver_s``: the driver's CPU seconds per video, on one core of which
    ``driver_clock`` goes to polling. ``driver_per_node``: one job (its own driver, on its node) per
    node instead of one driver for the cluster."""
    actor_s = convert_s / actor_cpus + 1.0 / gpu_rate + write_s
    rows = []
    for n in NODE_COUNTS:
        # each node: actor_cpus for its encoder actor; one core for the driver (+ GCS) on the head,
        # or on every node with a job per node
        decode_cores = n * (NODE_CORES - actor_cpus) - (n if driver_per_node else 1)
        caps = {
            "decode": decode_cores / decode_s,
            "gpu_encode": n * gpu_rate,
            "encoder_actor_serial": n / actor_s,
        }
        if driver_s:
            caps["driver"] = (n if driver_per_node else 1) * (1.0 - driver_clock) / driver_s
        binding = min(caps, key=caps.get)
        rate = caps[binding]
        rows.append({
            "nodes": n, "gpus": n, "cores": n * NODE_CORES, "decode_cores": decode_cores,
            **{f"{k}_videos_per_s": round(v, 1) for k, v in caps.items()},
            "binding_stage": binding, "videos_per_s": round(rate, 1),
            "hours_for_1e6": round(VIDEOS_TO_MODEL / rate / 3600, 2),
            "gpu_busy_share": round(min(1.0, rate / (n * gpu_rate)), 3),
        })
    return {
        "label": label, "modelled": True, "gpu_videos_per_s": gpu_rate, "decode_cpu_s_per_video": round(decode_s, 5),
        "encoder_actor_cpus_and_convert_threads": actor_cpus, "convert_s_per_video_one_core": round(convert_s, 5),
        "driver_cpu_s_per_video": driver_s, "driver_clock_cores": driver_clock,
        "drivers": "one per node" if driver_per_node else "one for the cluster",
        "decode_cores_per_gpu_to_keep_it_busy": round(gpu_rate * decode_s, 1),
        "decode_cores_per_gpu_at_encoder_actor_rate": round(decode_s / actor_s, 1),
        "decode_cores_per_node": NODE_CORES - actor_cpus - (1 if driver_per_node else 0),
        "encoder_actor_s_per_video": round(actor_s, 5),
        "encoder_actor_videos_per_s": round(1.0 / actor_s, 1), "rows": rows,
    }


def stage_utilisation(summary: dict[str, Any], cpus: int) -> dict[str, Any]:
    """Worker seconds of each stage over (pipeline wall x workers of the stage)."""
    wall, encoders = summary["wall"], summary["encoders"]
    decode_slots = cpus - encoders  # each CPU encoder actor holds 1 CPU; decode tasks 1 CPU each
    return {
        "decode_workers": decode_slots, "encoder_actors": encoders,
        "decode": round(summary["decode"] / (wall * decode_slots), 3),
        "encode": round(summary["encode"] / (wall * encoders), 3),
        "shard_writes": round(summary["write"] / (wall * encoders), 3),
        "encoder_actor_busy (encode + writes)": round((summary["encode"] + summary["write"]) / (wall * encoders), 3),
        "driver_commits": round(summary["commit"] / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "vit_b32"], default="vit_b32")
    parser.add_argument("--videos", type=int, default=240, help="list entries (the shared clips repeated)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of all modes, order alternating (default: 2; 1 with --config tiny)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bundle", type=Path, default=None, help="reuse an exported bundle of this config")
    parser.add_argument("--work", type=Path, default=None,
                        help="work dir (bundle cache, lists, indexes; default: a temporary one)")
    parser.add_argument("--object-store-mib", type=int, default=1024, help="object store of each simulated node")
    parser.add_argument("--engine-items", type=int, default=None,
                        help="items through the no-op Ray pipeline, the engine's own cost (default: 480; 64 with "
                             "--config tiny; 0: skip)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per mode before giving up")
    parser.add_argument("--keep", action="store_true", help="keep the indexes")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--inner", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.show_library_output()

    if args.inner is not None:  # inside the namespace
        spec = json.loads(args.inner.read_text())
        result = run_inner(spec)
        Path(spec["result"]).write_text(json.dumps(result, indent=1))
        return

    tiny = args.config == "tiny"
    args.rounds = args.rounds or (1 if tiny else 2)
    args.engine_items = (64 if tiny else 480) if args.engine_items is None else args.engine_items
    check_namespace()
    started, code_before = time.perf_counter(), _code_state()
    machine = common.machine({"single_decode_workers": "ucofia-run default (CPU count, at most 8)",
                              "encoder_intra_op_threads": "onnxruntime default", "ray_cpus": RAY_CPUS})
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="ucofia-ingest-scale-")
        work = Path(tmp.name)
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        clips = common.shared_clips()
        bundle_dir = cached_bundle(work, args.config, args.bundle)
        video_list = write_list(work, clips, args.videos)
        facts = clip_facts(clips)
        print(f"[probe] single-core decode of {len(clips)} clips ...", file=sys.stderr, flush=True)
        probes = [decode_probe(bundle_dir, clips, args.batch_size)]
        spec = {"bundle": str(bundle_dir), "videos": str(video_list), "batch_size": args.batch_size,
                "object_store_bytes": args.object_store_mib * 2**20}
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = list(args.modes) if r % 2 == 0 else list(reversed(args.modes))
            results: dict[str, Any] = {}
            for mode in order:
                index_dir = work / "indexes" / f"round{r}_{mode}"
                shutil.rmtree(index_dir, ignore_errors=True)
                index_dir.parent.mkdir(parents=True, exist_ok=True)
                print(f"[round {r + 1}/{args.rounds}] {mode} ...", file=sys.stderr, flush=True)
                res = run_mode(mode, {**spec, "index": str(index_dir)}, work, args.timeout)
                res["index"] = str(index_dir)
                results[mode] = res
                pipe = res.get("ray_summary", {}).get("wall") or res.get("indexed_line", {}).get("seconds")
                print(f"[round {r + 1}] {mode}: command {res['command_wall_seconds']:.1f} s, pipeline {pipe} s; "
                      f"other processes {res['other_processes_cores_busy']} cores", file=sys.stderr, flush=True)
            reference = results.get("single") or results[order[0]]
            checks = {mode: compare_indexes(Path(reference["index"]), Path(res["index"]))
                      for mode, res in results.items() if res is not reference}
            rounds.append({"order": order, "modes": results, "index_checks_vs_" +
                           ("single" if "single" in results else order[0]): checks})
            if not args.keep:
                for res in results.values():
                    shutil.rmtree(res["index"], ignore_errors=True)
        engine = None
        if args.engine_items and any(m != "single" for m in args.modes):
            print(f"[engine] the Ray pipeline's shape with no-op stages, {args.engine_items} items ...",
                  file=sys.stderr, flush=True)
            engine = run_mode("ray_engine", {**spec, "engine_items": args.engine_items}, work, args.timeout)
        probes.append(decode_probe(bundle_dir, clips, args.batch_size))
        result = assemble(args, machine, facts, probes, rounds, engine, time.perf_counter() - started)
        result["code"] = {"at_start": code_before, "at_end": _code_state()}
    finally:
        if tmp is not None:
            tmp.cleanup()
    common.write_result(args.output, result)
    print("\n".join(result["summary"]), file=sys.stderr)


def _code_state() -> dict[str, Any]:
    """The commit measured and the files of runtime/ changed from it (uncommitted work in the checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_runtime_files": git("status", "--porcelain", "runtime").splitlines()}


def _local_address(address: str) -> bool:
    """Loopback or unspecified (a listening socket), IPv4-mapped IPv6 included."""
    try:
        ip = ipaddress.ip_address(address.rsplit(":", 1)[0] if address.count(":") == 1 else address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _cpu_line(mode: str, item: dict[str, Any], videos: int) -> str:
    """Where a mode's CPU went (round 1), ms per video per process kind."""
    roles = item["cpu_seconds_by_process"][0]
    total = sum(r["cpu_seconds"] for r in roles.values())
    parts = ", ".join(f"{role} {1e3 * r['cpu_seconds'] / videos:.0f}" for role, r in roles.items()
                      if r["cpu_seconds"] >= 0.1)
    return f"  {mode} CPU per video (round 1): {1e3 * total / videos:.0f} ms in all = {parts}"


def summary_lines(args: argparse.Namespace, per_mode: dict[str, Any], ratios: dict[str, Any], ray_modes: list[str],
                  indexes_equal: bool, bitwise: bool, loopback_only: bool, addresses: set[str], decode_s: float,
                  prep_s: float, write_s: float, engine: dict[str, Any] | None, models: dict[str, Any],
                  probes_conv: dict[str, Any] | None = None) -> list[str]:
    """The printout: measured figures first, then the model (labelled as such)."""
    n = args.videos
    lines = [f"MEASURED: {n} videos, {args.rounds} round(s) with the modes alternating, batch {args.batch_size}, "
             f"config {args.config}; videos/s medians:"]
    for mode, item in per_mode.items():
        lines.append(f"  {mode:9s}: whole command {item['command_videos_per_s']:.3f} (walls "
                     f"{', '.join(f'{w:.1f}' for w in item['command_wall_seconds'])} s), pipeline "
                     f"{item['pipeline_videos_per_s']:.3f}; other processes {item['other_processes_cores_busy']} cores")
    for name, r in ratios.items():
        met = ""
        if name.startswith("ray_local"):
            met = "".join(f", {what} {'met' if r[what] >= TARGET_RAY_LOCAL else 'NOT met'}"
                          for what in ("command", "pipeline"))
            met = f"  (target >= {TARGET_RAY_LOCAL}{met})"
        lines.append(f"  {name}: whole command {r['command']:.3f}x, pipeline {r['pipeline']:.3f}x{met}")
    for mode in ray_modes:
        u, t = per_mode[mode]["stage_utilisation"][0], per_mode[mode]["ray_summary"][0]
        lines.append(f"  {mode} stages (round 1): worker seconds decode {t['decode']:.1f}, encode {t['encode']:.1f}, "
                     f"writes {t['write']:.1f}, driver commits {t['commit']:.1f} over {t['wall']:.1f} s; utilisation: "
                     f"decode {u['decode']:.0%} of {u['decode_workers']} worker, encoder actor "
                     f"{u['encoder_actor_busy (encode + writes)']:.0%}")
    for mode, item in per_mode.items():
        lines.append(_cpu_line(mode, item, n))
    lines.append(f"  indexes equal across modes (ids, entries, features): {indexes_equal} "
                 f"({'bitwise' if bitwise else 'within 1e-5'}); Ray nodes and TCP addresses loopback only: "
                 f"{loopback_only} ({', '.join(sorted(addresses))})")
    ray_decode = _median([per_mode[m]["stage_seconds_per_video"]["decode"] for m in ray_modes])
    lines.append(f"  per video: decode + hash {decode_s * 1e3:.1f} ms CPU on one core (stages.decode_batch alone; "
                 f"{(ray_decode or 0) * 1e3:.0f} ms wall in the Ray runs, sharing the cores with the encoder), frames "
                 f"to float {prep_s * 1e3:.1f} ms, shard write {write_s * 1e3:.1f} ms")
    if probes_conv:
        per = probes_conv["wall_s_per_video_by_threads"]
        lines.append(f"  encoder actor's frame conversion (ShardEncoder._model_input, {probes_conv['videos']} videos): "
                     + ", ".join(f"{t} thread(s) {1e3 * v:.1f} ms" for t, v in per.items())
                     + f" wall per video ({probes_conv['speedup']:.2f}x on {probes_conv['threads_measured']} threads; "
                       f"GPU actors use {probes_conv['gpu_actor_cpus']})")
    if engine:
        runs, fit = engine["runs"], engine["driver_fit"]
        fast, slow = runs["3n"], runs["n_sleep_bound"]
        per_batch = sorted((r for r in runs.values() if r is fast or r["rows"] == fast["rows"]),
                           key=lambda r: r["decode_batch"])
        lines.append(f"  Ray engine alone (no-op stages carrying frame-sized arrays, {RAY_CPUS} CPUs): " + "; ".join(
            f"decode batch {r['decode_batch']}: {r['items_per_second']:.0f} items/s, {r['total_cpu_ms_per_item']:.1f} "
            f"ms CPU per item in all, driver {r['driver_cpu_ms_per_item']:.1f} ms" for r in per_batch))
        lines.append(f"  driver: {fast['driver_cores_busy']:.2f} cores at {fast['items_per_second']:.0f} items/s, "
                     f"{slow['driver_cores_busy']:.2f} at {slow['items_per_second']:.0f} (sleep-bound), decode batch "
                     f"{fit['decode_batch']} (shipped) -> {fit['clock_cores']:.2f} cores polling + per video: "
                     + ", ".join(f"{v:.1f} ms at decode batch {b}" for b, v in
                                 fit["cpu_ms_per_item_by_decode_batch"].items()))
    for m in models.values():
        lines.append(f"MODELLED, {m['label']}: {m['gpu_videos_per_s']} videos/s per GPU, {NODE_CORES} cores per node; "
                     f"{m['decode_cores_per_gpu_to_keep_it_busy']} decode cores per GPU keep it busy, "
                     f"{m['decode_cores_per_gpu_at_encoder_actor_rate']} feed its encoder actor "
                     f"({m['encoder_actor_videos_per_s']} videos/s); "
                     f"{m['decode_cores_per_node']} decode cores per node")
        for row in m["rows"]:
            caps = ", ".join(f"{k} {row[f'{k}_videos_per_s']:.0f}" for k in
                             ("decode", "gpu_encode", "encoder_actor_serial", "driver") if f"{k}_videos_per_s" in row)
            lines.append(f"  {row['nodes']:3d} node(s): {caps} videos/s -> {row['binding_stage']} binds, "
                         f"{row['hours_for_1e6']:.2f} h for 10^6 videos (GPU busy {row['gpu_busy_share']:.0%})")
    return lines


def assemble(args: argparse.Namespace, machine: dict[str, Any], facts: dict[str, Any], probes: list[dict[str, Any]],
             rounds: list[dict[str, Any]], engine: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """The per-mode medians over rounds, ratios, utilisation, the model, the summary lines."""
    from runtime.distributed.pipeline import GPU_ACTOR_CPUS, RayOptions

    n = args.videos
    per_mode: dict[str, Any] = {}
    for mode in args.modes:
        runs = [rd["modes"][mode] for rd in rounds]
        cmd_walls = [r["command_wall_seconds"] for r in runs]
        pipes = [r["ray_summary"]["wall"] if "ray_summary" in r else r.get("indexed_line", {}).get("seconds")
                 for r in runs]
        item: dict[str, Any] = {
            "command_wall_seconds": cmd_walls, "pipeline_seconds": pipes,
            "command_videos_per_s": _median([n / w for w in cmd_walls]),
            "pipeline_videos_per_s": _median([n / p for p in pipes if p]),
            "command_overhead_seconds (wall - pipeline)": _median([w - p for w, p in zip(cmd_walls, pipes) if p]),
            "other_processes_cores_busy": [r["other_processes_cores_busy"] for r in runs],
            "load_average_before": [r["load_average_before"] for r in runs],
            "load_average_after": [r["load_average_after"] for r in runs],
            "this_benchmark_cores_busy": [r["this_benchmark_cores_busy"] for r in runs],
            "cpu_seconds_by_process": [r["cpu_seconds_by_process"] for r in runs],
            "command": runs[0]["command"],
        }
        if "ray_summary" in runs[0]:
            item["ray_summary"] = [r["ray_summary"] for r in runs]
            item["stage_utilisation"] = [stage_utilisation(r["ray_summary"], RAY_CPUS) for r in runs]
            item["stage_seconds_per_video"] = {
                k: _median([r["ray_summary"][k] / n for r in runs]) for k in ("decode", "encode", "write", "commit")}
            item["driver_cpu_seconds_in_pipeline_window"] = [
                r.get("cpu_seconds_in_pipeline_window", {}).get("driver (ucofia-run)") for r in runs]
            item["cpu_seconds_in_pipeline_window"] = [r.get("cpu_seconds_in_pipeline_window") for r in runs]
            item["ray_node_addresses"] = sorted({
                a["address"] for r in runs for a in (r.get("cluster") or r.get("ray_probe") or {}).get("nodes", [])})
            item["ray_node_addresses_from_raylets"] = sorted({
                a for r in runs for a in r["ray_node_addresses_from_raylets"]})
            if "cluster" in runs[0]:
                item["cluster"] = [r["cluster"] for r in runs]
        item["tcp_addresses_seen"] = sorted({a for r in runs for a in r["tcp_addresses_seen"]})
        item["namespace_interfaces"] = runs[0]["interfaces"]
        item["stderr_notes"] = runs[0]["stderr_notes"]
        per_mode[mode] = item
    addresses = {a for m in per_mode.values() for a in m["tcp_addresses_seen"] + m.get("ray_node_addresses", [])
                 + m.get("ray_node_addresses_from_raylets", [])}
    if engine:
        addresses |= set(engine["tcp_addresses_seen"]) | {n["address"] for n in engine["nodes"]}
    loopback_only = all(_local_address(a) for a in addresses)
    ratios: dict[str, Any] = {}
    if "single" in per_mode:
        base = per_mode["single"]
        for mode in per_mode:
            if mode == "single":
                continue
            ratios[f"{mode} / single"] = {
                "command": round(per_mode[mode]["command_videos_per_s"] / base["command_videos_per_s"], 3),
                "pipeline": round(per_mode[mode]["pipeline_videos_per_s"] / base["pipeline_videos_per_s"], 3)}
    checks = [c for rd in rounds for key, v in rd.items() if key.startswith("index_checks") for c in v.values()]
    indexes_equal = all(c["same_ids"] and c["features_equal"] and c["same_entries"] for c in checks)
    bitwise = all(c.get("features_bitwise_equal") for c in checks)

    decode_s = statistics.mean(p["cpu_s_per_video"] for p in probes)
    prep_s = statistics.mean(p["to_model_input_cpu_s_per_video"] for p in probes)
    ray_modes = [m for m in ("ray_local", "two_nodes") if m in per_mode]
    write_s = _median([per_mode[m]["stage_seconds_per_video"]["write"] for m in ray_modes]) or 0.0
    shipped = RayOptions().decode_batch
    by_batch = engine["driver_fit"]["cpu_ms_per_item_by_decode_batch"] if engine else {}
    driver_s = max(by_batch[str(shipped)], 0.01) / 1e3 if engine else None
    driver_clock = min(max(engine["driver_fit"]["clock_cores"], 0.0), 0.9) if engine else 0.0
    gpu = gpu_encode_rate(probes[0]["frames"][0])
    fp32 = gpu["videos_per_second"]
    # what pipeline.actor_resources gives a GPU actor on a node of NODE_CORES CPUs and 1 GPU
    actor_cpus = max(1, min(GPU_ACTOR_CPUS, NODE_CORES - 1))
    models = {"shipped_fp32": model(
        decode_s, prep_s, write_s, actor_cpus, driver_s, driver_clock, fp32,
        f"AS SHIPPED (decode tasks of {shipped} videos, GPU actors of {actor_cpus} CPUs converting frames on "
        f"{actor_cpus} threads), one driver, GPU fp32 (the gpu_check H100 rate)")}
    if engine and str(4 * shipped) in by_batch:
        models["shipped_decode_batch_x4_fp32"] = model(
            decode_s, prep_s, write_s, actor_cpus, max(by_batch[str(4 * shipped)], 0.01) / 1e3, driver_clock,
            fp32, f"as shipped with the CLI option --ray-decode-batch {4 * shipped}, one driver, GPU fp32")
    models["hypothetical_job_per_node_fp32"] = model(
        decode_s, prep_s, write_s, actor_cpus, driver_s, driver_clock, fp32,
        f"HYPOTHETICAL use: the list split in N parts, one `index --ray` job per node (its own driver, decode "
        f"batch {shipped}) into its own index, then `ucofia-run merge` (the merge is NOT modelled), GPU fp32",
        driver_per_node=True)
    lines = summary_lines(args, per_mode, ratios, ray_modes, indexes_equal, bitwise, loopback_only, addresses,
                          decode_s, prep_s, write_s, engine, models, probes[-1].get("encoder_actor_conversion"))
    return {
        "benchmark": "ingest_scale", "config": args.config, "videos": n, "rounds": len(rounds),
        "batch_size": args.batch_size, "clips": facts, "machine": machine,
        "load_average_after": common.load_average(), "seconds_total": round(seconds, 1),
        "setup": {
            "single": "ucofia-run index (decode thread pool + onnxruntime encoder, one process)",
            "ray_local": f"ucofia-run index --ray --ray-cpus {RAY_CPUS} (Ray started by the command)",
            "ray_settings": f"the CLI's defaults: decode tasks of {RayOptions().decode_batch} videos, one CPU encoder "
                            f"actor of 1 CPU (no GPU here; a GPU actor would hold {GPU_ACTOR_CPUS})",
            "two_nodes": f"ray.cluster_utils.Cluster: head + 1 node, 1 CPU each (the 2 cores shared out; the same "
                         f"{RAY_CPUS} CPUs of Ray resources as ray_local), {args.object_store_mib} MiB object store "
                         f"each; ucofia-run index --ray --ray-address <cluster>",
            "thumbnails": "off (--no-thumbnails) in every mode: thumbnails.py measures them",
            "progress_bars": "on (no -q) in every mode, as before; the `ray:` stage summary is printed either way",
            "namespace": "each mode in `unshare -n -p -f --mount-proc` with only lo up and a private tmpfs on /tmp/ray",
        },
        "measured": {
            "modes": per_mode, "ratios": ratios,
            "target_ray_local_over_single": TARGET_RAY_LOCAL,
            "meets_target_command": ratios.get("ray_local / single", {}).get("command", 0) >= TARGET_RAY_LOCAL,
            "meets_target_pipeline": ratios.get("ray_local / single", {}).get("pipeline", 0) >= TARGET_RAY_LOCAL,
            "indexes_equal": indexes_equal, "indexes_bitwise_equal": bitwise,
            "loopback_only": loopback_only, "addresses_seen": sorted(addresses), "ray_engine_alone": engine,
            "decode_probe_single_core": probes,
            "per_video_costs_used_by_the_model_s": {
                "decode_cpu": round(decode_s, 5), "frames_to_float_cpu": round(prep_s, 5),
                "shard_write": write_s, "driver_cpu": driver_s},
        },
        "gpu_rate": gpu,
        "modelled": {"videos": VIDEOS_TO_MODEL, "node": f"1 GPU + {NODE_CORES} cores",
                     "assumptions": [
                         "decode scales linearly over cores at this machine's single-core cost per video of these "
                         "clips (mean duration and resolution in `clips`); each node keeps 1 core for its encoder "
                         "actor, the head 1 more for the driver and GCS",
                         f"a GPU encoder actor holds GPU_ACTOR_CPUS = {GPU_ACTOR_CPUS} CPUs (runtime.distributed."
                         f"pipeline) and converts a batch's frames to float on as many threads, then runs the GPU "
                         f"call, then writes the shard, one after another (stages.ShardEncoder: one batch at a "
                         f"time), so one actor per GPU peaks at 1 / (convert / {GPU_ACTOR_CPUS} + 1/gpu_rate + write); "
                         f"convert = this machine's one-core cost (linear thread scaling assumed: "
                         f"decode_probe_single_core[].encoder_actor_conversion checks it on this machine's cores). "
                         f"Each node has {NODE_CORES} - {GPU_ACTOR_CPUS} cores left for decode tasks",
                         "one driver for the whole cluster, one core: it binds at (1 - clock_cores) / cpu_s_per_item "
                         "(ray_engine_alone.driver_fit: the no-op pipeline at full speed and sleep-bound on this VM's "
                         "busy cores; Ray Data's executor, task and actor-call submission, receiving batches); commits "
                         "(measured ~0) left out. Per decode task more than per video: a larger decode batch divides "
                         "it (driver_fit.cpu_ms_per_item_by_decode_batch); as shipped = the CLI default decode batch",
                         "HYPOTHETICAL job per node: N independent `index --ray` jobs (a driver and its core on each "
                         "node), each on 1/N of the list, merged by `ucofia-run merge` afterwards (not modelled: "
                         "it hard-links the inputs' shards where it can and recomputes the SK video biases)",
                         "shared storage and the network are not modelled (no bottleneck assumed)"],
                     **models},
        "summary": lines,
    }


if __name__ == "__main__":
    main()
