"""Distributed head scoring on Ray: one actor per model replica, work units scheduled to free actors.

    tables = interp.distributed.run("retrieval", "default", {"lengths": [1000, 2000]}, workers=2)
    interp report -m default -a retrieval --ray local --workers 2      # same report folder as a local run
    interp report -m default -a retrieval --ray auto                  # join a running cluster (ray start)

An analysis splits into independent units (``interp.units``). Each actor (``_Replica``) loads the model once
(``num_cpus`` / ``num_gpus`` per actor; a CPU actor pins ``torch.set_num_threads`` to its share) and runs one
unit at a time; the driver keeps every actor busy (dynamic scheduling: a unit goes to the first free actor)
and merges the results in unit order, so the merged tables do not depend on the number of workers or the
order units finish. Only unit descriptions, parameters and small encoded results travel; weights and
activations stay on the actors.

Faults: a unit whose actor dies (killed, out of memory) is retried on another actor (``max_retries`` times,
then ``DistributedError`` naming the unit and the last error); a replacement actor is started for the dead
one; a result is recorded once per unit key. An actor whose model fails to load, or whose interp/torch
version differs from the driver's, stops the run with the node and the fix in one line. An unreachable
``ray_address`` fails within ~10 s. With ``checkpoint`` (the report uses ``parts/<analysis>.units.jsonl``)
every finished unit is appended as it arrives (``interp.io.JsonlCheckpoint``); a rerun after a driver crash
runs only the missing units. Tested in ``tests/integration/test_distributed*.py`` on a loopback cluster.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from .units import ModelInfo, Unit, check_units, decode, drive, encode, splitter_for

LOCAL = "local"


class DistributedError(RuntimeError):
    """A distributed run cannot go on (the message is one line: what failed, where, what to do)."""


def _versions() -> dict:
    import torch

    import interp

    return {"interp": interp.__version__, "torch": torch.__version__}


def _import_hub_kernels() -> None:
    """A replica started from a source checkout has the checkout on ``sys.path``, where ``kernels/`` (installed
    as ``interp.kernels``) shadows the hub package ``kernels`` that transformers imports at model load; import
    the real one first with the checkout off the path (nothing happens where it is not installed)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        import kernels  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


class _Replica:
    """One model replica (a Ray actor): loads the model once, then runs units one at a time."""

    def __init__(self, model_spec: str, n_threads: int, device: str, driver_versions: dict):
        import torch

        self.error, self.model = None, None
        self.host = socket.gethostname()
        t0 = time.perf_counter()
        mine = _versions()
        bad = [f"{k} {mine[k]} here, {v} on the driver" for k, v in driver_versions.items() if mine.get(k) != v]
        if bad:
            self.error = (f"version mismatch on node {self.host}: {'; '.join(bad)}; install the driver's versions "
                          "on every node (or give ray.init a runtime_env)")
            return
        if device == "cpu":
            torch.set_num_threads(max(1, n_threads))
        _import_hub_kernels()
        try:
            from interp import load_model

            self.model = model_spec() if callable(model_spec) else load_model(model_spec, device=device)
        except Exception as e:  # ModelNotAvailableError names the install command
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.error = f"model {model_spec!r} failed to load on node {self.host}: {first}"
        self.load_seconds = round(time.perf_counter() - t0, 3)

    def info(self) -> dict:
        import ray

        m = self.model
        model = None if m is None else ModelInfo(m.name, m.shape, m.weights_hash, getattr(m, "source", None))
        return {"pid": os.getpid(), "host": self.host, "node_id": ray.get_runtime_context().get_node_id(),
                "error": self.error, "model": model, "load_seconds": getattr(self, "load_seconds", None)}

    def call(self, fn, *args):
        """``fn(model, *args)`` on this replica (small results only, e.g. the report page's example)."""
        return fn(self.model, *args)

    def run_unit(self, splitter, params, seed: int, unit: Unit) -> dict:
        import torch

        torch.manual_seed(seed)
        t0 = time.perf_counter()
        result = encode(splitter.run(self.model, params, unit))
        return {"result": result, "seconds": round(time.perf_counter() - t0, 4), "pid": os.getpid(),
                "host": self.host}


def _probe(address: str, timeout: float = 10.0) -> None:
    """One clear line within ``timeout`` s when ``host:port`` (or ``ray://host:port``) does not answer."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--ray {address!r} is not an address; give 'local', 'auto', HOST:PORT or "
                               "ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise DistributedError(f"Ray cluster at {address!r} is unreachable ({e.strerror or e}); check the address "
                               "and that the cluster is up (ray status), or use --ray local") from None


@dataclass
class Executor:
    """A pool of model replicas on a Ray cluster (``ray_address``: ``"local"``/``None`` starts a loopback
    cluster on this machine and stops it on ``close``; ``"auto"``, ``HOST:PORT`` or ``ray://HOST:PORT`` join
    one; a Ray already initialised in this process is used as it is)."""

    model_spec: object  # a spec string for interp.load_model, or a picklable factory () -> Model (tests)
    ray_address: str | None = LOCAL
    workers: int = 2
    num_cpus: float = 1
    num_gpus: float = 0
    max_retries: int = 2
    replicas: list = field(default_factory=list)
    units: dict = field(default_factory=dict)  # analysis → [per-unit timing records]
    _owns: bool = False
    _started: bool = False
    info_: ModelInfo | None = None

    def __post_init__(self):
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise DistributedError(f"workers = {self.workers!r}: give a positive int")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise DistributedError(f"resources per worker num_cpus={self.num_cpus}, num_gpus={self.num_gpus}: "
                                   "num_cpus must be > 0 and num_gpus >= 0")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise DistributedError(f"max_retries = {self.max_retries!r}: give an int >= 0")

    # -- cluster --------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        import logging

        import ray

        if ray.is_initialized():
            return
        addr = self.ray_address
        try:
            if addr in (None, LOCAL):
                os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # listen on 127.0.0.1 only
                ray.init(num_cpus=int(max(1, self.workers * self.num_cpus + 0.999)),
                         num_gpus=int(self.workers * self.num_gpus + 0.999) or None, include_dashboard=False,
                         object_store_memory=128 << 20, log_to_driver=False, logging_level=logging.WARNING)
            else:
                if addr != "auto":
                    _probe(addr)
                ray.init(address=addr, log_to_driver=False, logging_level=logging.WARNING)
        except DistributedError:
            raise
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DistributedError(f"cannot start/join Ray at {addr!r}: {first}") from None
        self._owns = True

    def _spawn(self):
        import ray

        device = "cuda" if self.num_gpus > 0 else "cpu"
        cls = ray.remote(_Replica).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0)
        actor = cls.remote(self.model_spec, int(max(1, self.num_cpus)), device, _versions())
        return actor, actor.info.remote()

    def _ready(self, actor, info: dict) -> dict:
        if info["error"]:
            raise DistributedError(info["error"])
        rec = {k: info[k] for k in ("pid", "host", "node_id", "load_seconds")}
        self.replicas.append(rec)
        self.info_ = self.info_ or info["model"]
        return rec

    def start(self) -> ModelInfo:
        """Connect, start ``workers`` replicas and wait until each has loaded the model; the model's info."""
        import ray

        if self._started:
            return self.info_
        self._connect()
        self._actors = []
        try:
            spawned = [self._spawn() for _ in range(self.workers)]
            for actor, ref in spawned:
                self._ready(actor, ray.get(ref))
                self._actors.append(actor)
        except ray.exceptions.RayError as e:
            self.close()
            raise DistributedError(f"a model replica failed to start: {str(e).splitlines()[0]}") from None
        except DistributedError:
            self.close()
            raise
        self._started = True
        return self.info_

    def close(self) -> None:
        """Stop the replicas; shut the cluster down when this executor started or joined it."""
        import ray

        for a in getattr(self, "_actors", []) + list(getattr(self, "_loading", {}).values()):
            try:
                ray.kill(a)
            except Exception:
                pass
        self._actors, self._loading = [], {}
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = self._started = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def summary(self) -> dict:
        """The cluster (nodes, workers, resources per actor) and per-unit timings, for the manifest."""
        import ray

        nodes = [{"node_id": n["NodeID"], "host": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
                  "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")]
        return {"ray_version": ray.__version__, "address": self.ray_address, "nodes": nodes,
                "workers": self.workers, "resources_per_worker": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
                "max_retries": self.max_retries, "replicas": list(self.replicas), "units": self.units}

    def call(self, fn, *args):
        """``fn(model, *args)`` on the first replica that answers (``fn`` must return a small result)."""
        import ray

        self.start()
        last = None
        for actor in list(self._actors):
            try:
                return ray.get(actor.call.remote(fn, *args))
            except ray.exceptions.RayActorError as e:
                last = e
        raise DistributedError(f"no model replica answered ({str(last).splitlines()[0] if last else 'none left'})")

    # -- units ----------------------------------------------------------------------------------------------
    def run_units(self, splitter, params, seed: int, units: list[Unit], on_result=None) -> dict:
        """Run ``units`` on the replicas; ``{unit key: output}`` (output: result, seconds, pid, host, attempts).
        ``on_result(unit, output)`` is called as each unit finishes (e.g. to checkpoint it)."""
        import ray

        self.start()
        sref = ray.put(splitter)
        pending, free = deque(units), list(self._actors)
        inflight, attempts, done = {}, {}, {}
        starting, self._loading = getattr(self, "_loading", {}), {}  # replacements from an earlier run
        for _ in range(self.workers - len(self._actors) - len(starting)):  # replicas lost earlier: top up
            actor, info_ref = self._spawn()
            starting[info_ref] = actor
        try:
            self._schedule(sref, params, seed, pending, free, inflight, starting, attempts, done, on_result)
        finally:
            self._loading = starting  # still loading: they join the next run (close() stops them)
        return done

    def _schedule(self, sref, params, seed, pending, free, inflight, starting, attempts, done, on_result):
        import ray

        from .report.runner import AnalysisFailed, failure_kind

        while pending or inflight:
            while pending and free:
                actor, unit = free.pop(0), pending.popleft()
                inflight[actor.run_unit.remote(sref, params, seed, unit)] = (actor, unit)
            if not inflight and not starting:
                raise DistributedError("no model replica is left to run the remaining units")
            ready, _ = ray.wait(list(inflight) + list(starting), num_returns=1)
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    self._ready(actor, ray.get(ref))
                except ray.exceptions.RayError:
                    continue  # the replacement died too: the remaining actors go on
                self._actors.append(actor)
                free.append(actor)
                continue
            actor, unit = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker process died mid-unit
                attempts[unit.key] = attempts.get(unit.key, 0) + 1
                self._actors = [a for a in self._actors if a is not actor]
                if attempts[unit.key] > self.max_retries:
                    raise DistributedError(f"unit {unit.analysis}/{unit.key} failed on {attempts[unit.key]} workers "
                                           f"(max_retries={self.max_retries}); last error: "
                                           f"{str(e).splitlines()[0]}") from None
                pending.appendleft(unit)
                new, info_ref = self._spawn()
                starting[info_ref] = new
                continue
            except ray.exceptions.RayTaskError as e:  # the analysis raised: a retry fails the same way
                cause = getattr(e, "cause", None) or e
                raise AnalysisFailed(f"analysis {unit.analysis!r} unit {unit.key!r} failed: "
                                     f"{type(cause).__name__}: {cause}", failure_kind(cause)) from None
            free.append(actor)
            if unit.key in done:
                continue  # never count a unit twice
            out["attempts"] = attempts.get(unit.key, 0) + 1
            done[unit.key] = out
            if on_result is not None:
                on_result(unit, out)

    def run_analysis(self, spec, params, seed: int = 0, *, checkpoint=None, meta: dict | None = None) -> dict:
        """Split, run round by round (resuming finished units from ``checkpoint``), merge: the tables."""
        from .io import JsonlCheckpoint

        splitter = splitter_for(spec)
        n_first = len(check_units(splitter.split(params), spec.name))
        ckpt = None
        if checkpoint is not None:
            ckpt = JsonlCheckpoint(checkpoint, {"analysis": spec.name, "n_units": n_first, **(meta or {})},
                                   hint="delete it or rerun with --no-resume")
        timing, order = [], []

        def record(unit, out):
            if ckpt is not None:
                ckpt.add({"key": unit.key, **out})
            timing.append({"key": unit.key, "seconds": out["seconds"], "worker": out["pid"], "host": out["host"],
                           "attempts": out["attempts"], "resumed": False})

        def run_round(units):
            order.extend(u.key for u in units)
            kept = {u.key: ckpt.get(u.key) for u in units if ckpt is not None and u.key in ckpt}
            timing.extend({"key": k, "seconds": r["seconds"], "worker": r["pid"], "host": r["host"],
                           "attempts": r["attempts"], "resumed": True} for k, r in kept.items())
            new = self.run_units(splitter, params, seed, [u for u in units if u.key not in kept], on_result=record)
            return [decode((kept.get(u.key) or new[u.key])["result"]) for u in units]

        self.start()
        merged = drive(splitter, self.info_, params, run_round, spec.name)
        self.units[spec.name] = sorted(timing, key=lambda t: order.index(t["key"]))
        return merged

    # -- the report runner's hooks (interp.report.runner) ----------------------------------------------------
    def start_for_report(self, out, created: bool) -> ModelInfo:
        """``start`` with failures as ``ReportError`` (one line); the ``out`` folder this run made is removed."""
        from .report.runner import ReportError, _remove_if_new

        try:
            return self.start()
        except DistributedError as e:
            _remove_if_new(out, created)
            raise ReportError(str(e)) from None

    def run_part(self, spec, params, seed: int, out, h: str, *, resume: bool = True):
        """One analysis of a report: units checkpointed in ``parts/<analysis>.units.jsonl``, merged, written
        like a local part (``runner.write_part``)."""
        from .io import CheckpointMismatch
        from .report.runner import PARTS, ReportError, checked_results, write_part

        path = out / PARTS / f"{spec.name}.units.jsonl"
        if not resume:
            path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            results = self.run_analysis(spec, params, seed, checkpoint=path, meta={"params_hash": h})
        except (DistributedError, CheckpointMismatch) as e:
            raise ReportError(str(e)) from None
        results = checked_results(spec, results, self.info_.shape)
        return write_part(spec, params, out, h, results, time.perf_counter() - t0)


def report_executor(model, ray_address: str, workers: int = 2, resources: dict | None = None) -> Executor:
    """The ``Executor`` of ``run_report(..., ray=...)``; bad options raise ``ReportError`` (one line)."""
    from .report.runner import ReportError

    if not isinstance(model, str):
        raise ReportError("--ray needs a model spec (a name, folder or .gguf path), not a loaded model: each "
                          "replica loads the model itself")
    res = dict(resources or {})
    unknown = sorted(set(res) - {"num_cpus", "num_gpus"})
    if unknown:
        raise ReportError(f"worker resources {unknown}: only num_cpus and num_gpus are known")
    try:
        return Executor(model, ray_address, workers, res.get("num_cpus", 1), res.get("num_gpus", 0))
    except DistributedError as e:
        raise ReportError(str(e)) from None


def run(analysis: str, model_spec: str, params=None, *, ray_address: str | None = LOCAL, workers: int = 2,
        num_cpus: float = 1, num_gpus: float = 0, seed: int = 0, checkpoint=None, max_retries: int = 2) -> dict:
    """Run one registered ``analysis`` on ``workers`` replicas of ``model_spec``; its tables (as ``run`` gives).

    ``params``: the analysis's typed parameters (a dict of overrides or an instance). ``checkpoint``: a
    ``.jsonl`` path recording finished units (a rerun does only the missing ones)."""
    from interp.analyses import registry

    spec = registry.get(analysis)
    p = spec.params.coerce(params, where=f"params.{analysis}")
    with Executor(model_spec, ray_address, workers, num_cpus, num_gpus, max_retries) as ex:
        p.check_model(ex.info_, f"params.{analysis}")
        return ex.run_analysis(spec, p, seed, checkpoint=checkpoint)
