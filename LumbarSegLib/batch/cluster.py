"""The Dask side of ``lumbarseg batch``: the cluster, the worker set-up, and the task that runs one study.

* **Cluster.** By default a :class:`distributed.LocalCluster` on 127.0.0.1 sized to the machine
  (:func:`local_cluster_size`): one worker process per GPU on CUDA, else about one per two cores as memory
  allows; each worker runs one study at a time. ``--scheduler ADDRESS`` uses an existing cluster instead
  (``dask-jobqueue`` on SLURM/PBS, Kubernetes, ``dask scheduler`` + ``dask worker``).
* **Workers** (:class:`StudyWorker`, a worker plugin): torch and SimpleITK get the worker's share of the
  host's cores, so workers do not oversubscribe them; on a local GPU cluster worker *i* uses GPU *i*.
  The model is loaded once per worker process (:func:`worker_model`), not once per study.
* **A dead worker** (SIGKILL, the out-of-memory killer, Dask's memory limit): on the local cluster the
  scheduler gives up on the task at once (``allowed-failures`` 0) and :mod:`batch` resubmits it, so it
  runs again on a live worker; an existing cluster first retries as its own ``allowed-failures`` says.

Every study runs through :func:`runner.run_study` (the one runner): its result folder is whole or absent.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import InputError, LumbarSegError

WORKER_MEMORY_BYTES = 3 << 30  # room one study needs on a CPU worker (a 512x512x300 CT peaks near 1.4 GiB)
CONNECT_TIMEOUT_S = 10  # to reach --scheduler and hear its Dask handshake (a scheduler answers in milliseconds)
PLUGIN_NAME = "lumbarseg-study-worker"

_MODELS: dict = {}  # (model spec, device) -> loaded model, per worker process
_LOADS = [0]  # how many models this worker process has read from disk (1 for a whole batch)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_cluster_size(workers: int | None, device: str) -> tuple[int, int, int]:
    """(worker processes, torch threads per worker, GPUs to pin) of a LocalCluster on this machine."""
    from ..io.images import available_memory_bytes
    from ..inference.models import resolve_device

    cpus = usable_cpus()
    gpus = 0
    if resolve_device(device).type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        default = gpus
    else:
        memory = available_memory_bytes()
        default = max(1, cpus // 2)
        if memory:
            default = max(1, min(default, memory // WORKER_MEMORY_BYTES))
    n = workers or default
    if n < 1:
        raise InputError(f"--workers {n}: give at least 1 worker.")
    return n, max(1, cpus // n), gpus


class StudyWorker(WorkerPlugin):
    """Worker plugin: thread limits (and the GPU) for the studies this worker runs.

    ``torch_threads`` None: the host's cores shared among the workers of that host (``workers_per_host``,
    counted by the client from the scheduler) and the worker's task threads."""

    name = PLUGIN_NAME

    def __init__(self, torch_threads: int | None = None, gpus: int = 0, workers_per_host: dict | None = None):
        self.torch_threads = torch_threads
        self.gpus = gpus
        self.workers_per_host = dict(workers_per_host or {})

    def setup(self, worker) -> None:
        import SimpleITK as sitk
        import torch

        threads = self.torch_threads
        if threads is None:
            from distributed.comm.addressing import get_address_host

            host = get_address_host(worker.address)
            share = self.workers_per_host.get(host, 1) * max(1, worker.state.nthreads)
            threads = max(1, usable_cpus() // share)
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        if self.gpus:
            torch.cuda.set_device(int(worker.name) % self.gpus)

    def teardown(self, worker) -> None:
        _MODELS.clear()


def _scheduler_error(address: str, what: str) -> InputError:
    return InputError(f"--scheduler {address!r}: {what}. Give the address the scheduler prints, e.g. "
                      f"tcp://10.0.0.5:8786, or leave --scheduler out to run on a local cluster.")


def check_scheduler(address: str | None, timeout: float | None = None) -> None:
    """Refuse, in one line and within ``timeout`` seconds, an address that does not reach a Dask scheduler:
    empty, not an address, a port out of range, nothing listening (refused at once), no answer, another
    service (it never answers Dask's handshake: without this check the client would wait forever), a
    ``tls://`` address without the certificates in Dask's configuration."""
    import asyncio
    import socket

    import dask
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    if address is None:
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    if not address.strip():
        raise _scheduler_error(address, "the address is empty")
    try:
        scheme, location = parse_address(address if "://" in address else f"tcp://{address}")
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise _scheduler_error(address, f"not an address ({exc})") from None
    if scheme not in ("tcp", "tls"):
        raise _scheduler_error(address, f"the protocol {scheme}:// is not supported here (tcp:// or tls://)")
    if not 0 < port < 65536:
        raise _scheduler_error(address, f"port {port} does not exist (ports are 1 to 65535)")
    if scheme == "tls" and not dask.config.get("distributed.comm.tls.ca-file", None):
        raise _scheduler_error(address, "a tls:// scheduler needs its certificates, and Dask's configuration names "
                                        "none (distributed.comm.tls.ca-file, .client.cert, .client.key)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as exc:
        raise _scheduler_error(address, f"the host {host} is unknown ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise _scheduler_error(address, f"nothing listens at {host}:{port} (connection refused)") from None
    except (socket.timeout, TimeoutError):
        raise _scheduler_error(address, f"no answer from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise _scheduler_error(address, f"{host}:{port} cannot be reached ({exc.strerror or exc})") from None
    if scheme == "tls":
        return  # the certificates' handshake is the client's own; it is bounded by its timeout

    async def identity():
        comm = await asyncio.wait_for(connect(f"{scheme}://{location}", timeout=timeout), timeout)
        try:
            await asyncio.wait_for(comm.write({"op": "identity"}), timeout)
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    from concurrent.futures import ThreadPoolExecutor

    try:  # in a thread of its own: a caller may already run an event loop (a notebook)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(asyncio.run, identity()).result()
    except (asyncio.TimeoutError, TimeoutError, OSError, EOFError) as exc:
        raise _scheduler_error(address, f"something listens at {host}:{port}, but it did not answer as a Dask "
                                        f"scheduler within {timeout:g} s (another service on that port?)"
                                        + (f": {exc}" if str(exc) else "")) from None
    except Exception as exc:  # noqa: BLE001  a garbled answer from another protocol
        raise _scheduler_error(address, f"something listens at {host}:{port}, but it does not speak Dask's "
                                        f"protocol ({type(exc).__name__})") from None
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise _scheduler_error(address, f"a Dask {kind or 'service'} answers there, not a scheduler")


def start_client(scheduler: str | None, workers: int | None, device: str, studies: int, dashboard: bool = True):
    """(client, cluster or None, worker count) for a batch of ``studies``: a LocalCluster (no more workers
    than studies), or ``scheduler``'s cluster."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"logging": {"distributed": "error"}})  # our lines, not the cluster's chatter
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: could not connect to a Dask scheduler there ({exc}). "
                             f"Give the address a scheduler prints, e.g. tcp://10.0.0.5:8786.") from None
        info = client.scheduler_info()["workers"].values()
        hosts: dict[str, int] = {}
        for w in info:
            hosts[w["host"]] = hosts.get(w["host"], 0) + 1
        client.register_plugin(StudyWorker(None, 0, hosts), name=PLUGIN_NAME)
        return client, None, sum(hosts.values())
    n, threads, gpus = local_cluster_size(workers, device)
    n = max(1, min(n, studies))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # batch resubmits (see module doc)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0" if dashboard else None)
    try:
        client = Client(cluster)
        client.register_plugin(StudyWorker(threads, gpus), name=PLUGIN_NAME)
    except BaseException:
        cluster.close()
        raise
    return client, cluster, n


def dashboard_link(client, local: bool) -> str | None:
    """The Dask dashboard's address when the scheduler serves one. It needs ``bokeh`` where the scheduler
    runs: without it a local scheduler serves only a page asking for it, so no link is given."""
    import importlib.util

    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # an older scheduler without services, a closed client: no link to print
        return None


def worker_model(spec, device: str):
    """The model for ``spec`` on ``device``, loaded once per worker process (and placed on the device)."""
    from ..inference.models import resolve_device
    from ..study.runner import load_model

    key = (spec, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device, warn=False).to(resolve_device(device))
        _LOADS[0] += 1
    return _MODELS[key]


def _peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _quiet_progress(stage: str, fraction: float) -> None:
    """Workers print no stage lines; the client shows one bar for the batch."""


def run_study_task(study: dict, options: dict) -> dict:
    """On a worker: run one study (``batch_studies.Study.to_dict()``) with ``runner.StudyOptions`` fields
    ``options``; return {"report": ..., "error": ..., "wall_s", "worker", "peak_mb"}. Errors of the study
    (bad file, too large, out of memory) are returned, not raised: one bad study never stops the others."""
    from ..study.runner import StudyOptions, run_study

    t0 = time.perf_counter()
    result: dict = {"report": None, "error": None}
    try:
        model = worker_model(options.get("model"), options.get("device", "auto"))
        result["report"] = run_study(StudyOptions(**options), model=model, progress=_quiet_progress)
    except LumbarSegError as exc:
        result["error"] = str(exc)
    except MemoryError:
        result["error"] = "ran out of memory on the worker. Crop the CT to the lumbar region or use fewer workers."
    except OSError as exc:
        result["error"] = f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"
    except Exception as exc:  # a bug: the study fails with its one line; the traceback goes to the worker's log
        traceback.print_exc()
        result["error"] = f"unexpected error {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        from distributed import get_worker

        result["worker"] = get_worker().address
    except (ImportError, ValueError):
        result["worker"] = None
    result["wall_s"] = time.perf_counter() - t0
    import torch

    result["torch_threads"] = torch.get_num_threads()
    result["model_loads"] = _LOADS[0]
    result["peak_mb"] = _peak_memory_mb()
    result["study"] = study
    return result
