"""Many workers behind one LoadGen, on Ray: the harness's --runner for WORKERS and RAY_ADDRESS.

Each worker is a Ray actor that runs the reference harness's own model path (main.build and
main.warm_up: its dataset, preprocessing, backend and post-processing), loads the samples
LoadGen loads from its own copy of the dataset, and answers batches of sample indices with
the float32 detection rows the single-process harness sends. Only indices and detections
cross the network; LoadGen's query ids stay here.

A batch goes to the least-loaded worker. A worker lost mid-run (killed, out of memory, its
node gone) has its batches sent again to the others, so that LoadGen sees each sample
answered once; with no worker left the run fails at once. A worker that cannot start
stops the run before LoadGen starts, naming its node. workers.json in the run folder
lists the workers, what each answered and each loss; run_record.py copies it into run.json
and summary.json.
"""

import collections
import os
import platform
import queue
import re
import sys
import threading
import time
from importlib import metadata

import numpy as np

from retinanet import HARNESS, PROJECT_ROOT
from retinanet.run_folder import WORKERS

DEPTH = 2  # batches in flight per worker: one running, one waiting, so that none idles
VERSIONS = ("torch", "torchvision", "mlcommons-loadgen", "numpy")
START_TIMEOUT = 600.0  # seconds for a worker to load its model and warm up
# set where a node's Ray starts (ray start): that node's copy of the dataset, if not at DATA_DIR
NODE_DATA_DIR = "RETINANET_NODE_DATA_DIR"


def versions():
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe(error):
    """One line: the exception's type and the first line of its message; for an actor that
    died in its creation (a module missing on its node), the error it died of."""
    text = str(error).strip()
    raised = re.findall(r"^\s*(\w+(?:Error|Exception): .*)$", text, re.M)
    if "creation task" in text and raised:
        return raised[-1].strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def search_path():
    """Where the workers import from, as here: the harness's python/ (main.py, backends), the
    project (retinanet.ray_sut itself) and PYTHONPATH (a MODEL_FACTORY module); the same
    paths on every node."""
    paths = [str(HARNESS / "python"), str(PROJECT_ROOT)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys(paths))


class Worker:
    """One model, as the harness runs it, in a Ray actor."""

    def start(self, args, paths, environ, threads):
        """Build the harness's model path and warm it up; returns what run.json records."""
        os.environ.update(environ)
        for path in reversed(paths):
            if path not in sys.path:
                sys.path.insert(0, path)
        import failfast
        import main

        args.dataset_path = os.environ.get(NODE_DATA_DIR) or args.dataset_path
        if threads and args.backend == "pytorch-native" and not args.intra_op_threads:
            args.intra_op_threads = threads  # the cores of this machine, shared among its workers
        self.backend, self.ds, self.post_proc = main.build(args)
        self.count = self.ds.get_item_count()
        if not self.count:
            raise FileNotFoundError(f"no images of the dataset found in {args.dataset_path}")
        with failfast.Watchdog(args.stall_timeout) as watchdog:
            main.warm_up(args, self.backend, self.ds, watchdog)
        self.post_proc.start()
        return {
            "pid": os.getpid(),
            "host": platform.node(),
            "device": self.device(),
            "data_dir": args.dataset_path,
            "images": self.count,
            "versions": versions(),
        }

    def device(self):
        import torch

        if getattr(self.backend, "device", "cpu").startswith("cuda"):
            return torch.cuda.get_device_name(0)
        return f"cpu ({torch.get_num_threads()} threads)"

    def load(self, samples):
        self.ds.load_query_samples(samples)

    def unload(self, samples):
        self.ds.unload_query_samples(samples)

    def run(self, indices):
        """Each sample's detection rows as float32 arrays, and the accuracy bookkeeping."""
        data, label = self.ds.get_samples(indices)
        results = self.backend.predict({self.backend.inputs[0]: data})
        good, total = self.post_proc.good, self.post_proc.total
        processed = self.post_proc(results, indices, label, {})
        self.post_proc.content_ids.clear()  # the driver keeps them
        rows = [np.ascontiguousarray(processed[i], np.float32) for i in range(len(indices))]
        return rows, self.post_proc.good - good, self.post_proc.total - total


class RayRunner:
    """main.py's runner for --runner retinanet.ray_sut:RayRunner."""

    def __init__(self, args, ds, post_proc):
        import failfast
        import mlperf_loadgen as lg
        import ray

        self.lg, self.ray, self.failfast = lg, ray, failfast
        self.args, self.ds, self.post_proc = args, ds, post_proc
        self.max_batchsize = args.max_batchsize or 1
        self.take_accuracy = False
        self.result_timing = []
        self.progress = self.watchdog = None
        self.lock = threading.Lock()
        self.pending = collections.deque()  # batches not yet sent: (indices, query ids, issued)
        self.in_flight = {}  # ObjectRef -> (worker, batch, when it was sent)
        self.done = queue.Queue()  # completed ObjectRefs, from Ray's threads
        self.lost = []
        self.start_seconds = None
        # preflight.py: USE_GPU=yes for DEVICE=gpu, no for cpu
        self.gpu = os.environ.get("USE_GPU") == "yes"
        self.started = time.time()
        failfast.at_failure(self.shutdown)
        self.connect()
        self.workers = self.start_workers()
        self.start_seconds = time.time() - self.started
        self.write_record()
        print(
            f"ray_sut: {len(self.workers)} workers ready on "
            f"{len({w['node_id'] for w in self.workers})} nodes in "
            f"{time.time() - self.started:.1f} s",
            flush=True,
        )
        self.collector = threading.Thread(target=self.collect, daemon=True)
        self.collector.start()

    # -- start -------------------------------------------------------------------------

    def connect(self):
        ray = self.ray
        if self.args.ray_address:
            # a worker there imports this module before it runs any of it: the same paths
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(search_path())}}
            ray.init(address=self.args.ray_address, logging_level="WARNING", runtime_env=env)
            return
        # a private Ray on this machine, on loopback, gone with the run; its workers inherit
        # this process's environment (a runtime_env would cost a worker start of its own)
        os.environ["PYTHONPATH"] = os.pathsep.join(search_path())
        ray.init(
            num_cpus=max(os.cpu_count() or 1, self.args.workers or 1),
            include_dashboard=False,
            logging_level="WARNING",
            _node_ip_address="127.0.0.1",
        )

    def placements(self):
        """(node, resources, intra-op threads) per worker: one per GPU, or one per node on CPUs,
        unless --workers says how many; spread over the nodes in turn."""
        nodes = [n for n in self.ray.nodes() if n["Alive"]]
        gpu = self.gpu
        if gpu:
            slots = [n for n in nodes for _ in range(int(n["Resources"].get("GPU", 0)))]
            if not slots:
                self.failfast.fail("DEVICE=gpu but no node of the Ray cluster has a GPU")
        else:
            slots = list(nodes)
        count = self.args.workers or len(slots)
        if gpu and count > len(slots):  # Ray would wait for a GPU that never frees
            self.failfast.fail(
                f"WORKERS={count} on GPUs, but the Ray cluster has {len(slots)}: one worker per GPU"
            )
        chosen = [slots[i % len(slots)] for i in range(count)]
        per_node = collections.Counter(n["NodeID"] for n in chosen)
        placed = []
        for node in chosen:
            cpus = int(node["Resources"].get("CPU", 1))
            threads = 0 if gpu else max(1, cpus // per_node[node["NodeID"]])
            placed.append((node, {"num_gpus": 1} if gpu else {"num_cpus": 0}, threads))
        return placed

    def start_workers(self):
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(max_restarts=0, max_task_retries=0)(Worker)
        paths = search_path()
        environ = {k: os.environ[k] for k in ("USE_GPU",) if k in os.environ}
        if not self.gpu:
            environ["CUDA_VISIBLE_DEVICES"] = ""  # as this process: a cpu run hides the GPUs
        workers, starting = [], {}
        for number, (node, resources, threads) in enumerate(self.placements(), start=1):
            handle = actor.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                **resources,
            ).remote()
            worker = {
                "worker": number,
                "node": node.get("NodeName") or node["NodeManagerAddress"],
                "node_id": node["NodeID"],
                "address": node["NodeManagerAddress"],
                "handle": handle,
                "alive": True,
                "in_flight": 0,
                "answered": 0,
            }
            starting[handle.start.remote(self.args, paths, environ, threads)] = worker
            workers.append(worker)
        limit = max(START_TIMEOUT, self.args.stall_timeout or 0)
        ready, waiting = ray.wait(list(starting), num_returns=len(starting), timeout=limit)
        for ref in waiting:
            w = starting[ref]
            self.failfast.fail(
                f"worker {w['worker']} on node {w['node']} did not start in {limit:.0f} s"
            )
        mine = versions()
        for ref in ready:
            w = starting[ref]
            try:
                w.update(ray.get(ref))
            except ray.exceptions.RayError as error:
                self.failfast.fail(
                    f"worker {w['worker']} on node {w['node']} cannot start: "
                    f"{describe(getattr(error, 'cause', None) or error)}"
                )
            if w["versions"] != mine:
                differ = [k for k in mine if w["versions"].get(k) != mine[k]]
                self.failfast.fail(
                    f"worker {w['worker']} on node {w['node']} runs other versions than this "
                    "machine: "
                    + ", ".join(f"{k} {w['versions'].get(k)} (here {mine[k]})" for k in differ)
                )
            if w["images"] != self.ds.get_item_count():
                self.failfast.fail(
                    f"worker {w['worker']} on node {w['node']} finds {w['images']} images in "
                    f"{w['data_dir']}, this machine {self.ds.get_item_count()}"
                )
        return workers

    # -- LoadGen's calls ---------------------------------------------------------------

    def load_query_samples(self, samples):
        self.each_worker("load", samples)
        self.ds.last_loaded = time.time()

    def unload_query_samples(self, samples):
        self.each_worker("unload", samples)

    def each_worker(self, method, samples):
        """Every live worker does it; one lost meanwhile is recorded, one that raises ends the
        run (a worker without the samples could not answer)."""
        calls = {getattr(w["handle"], method).remote(samples): w for w in self.alive()}
        limit = max(START_TIMEOUT, self.args.stall_timeout or 0)
        for ref, w in calls.items():
            try:
                self.ray.get(ref, timeout=limit)
            except self.ray.exceptions.GetTimeoutError:
                self.failfast.fail(
                    f"worker {w['worker']} on node {w['node']} did not {method} samples in "
                    f"{limit:.0f} s"
                )
            except self.ray.exceptions.RayTaskError as error:
                self.failfast.fail(
                    f"worker {w['worker']} on node {w['node']} failed to {method} samples: "
                    f"{describe(error.cause or error)}"
                )
            except self.ray.exceptions.RayError as error:
                self.lose(w, error)

    def start_run(self, result_dict, take_accuracy):
        self.result_dict = result_dict
        self.result_timing = []
        self.take_accuracy = take_accuracy
        self.post_proc.start()

    def enqueue(self, query_samples):
        issued = time.time()
        indices = [q.index for q in query_samples]
        ids = [q.id for q in query_samples]
        bs = self.max_batchsize
        with self.lock:
            for i in range(0, len(indices), bs):
                self.pending.append((indices[i : i + bs], ids[i : i + bs], issued))
            self.dispatch()

    def finish(self):
        self.write_record()
        self.shutdown()

    # -- the work ----------------------------------------------------------------------

    def alive(self):
        return [w for w in self.workers if w["alive"]]

    def dispatch(self):
        """Pending batches to the least-loaded workers with room (under self.lock)."""
        while self.pending:
            room = [w for w in self.alive() if w["in_flight"] < DEPTH * self.max_batchsize]
            if not room:
                return
            worker = min(room, key=lambda w: w["in_flight"])
            batch = self.pending.popleft()
            ref = worker["handle"].run.remote(batch[0])
            worker["in_flight"] += len(batch[0])
            self.in_flight[ref] = (worker, batch, time.time())
            ref.future().add_done_callback(lambda _, ref=ref: self.done.put(ref))

    def collect(self):
        while True:
            ref = self.done.get()
            if ref is None:
                return
            with self.lock:
                worker, batch, sent = self.in_flight.pop(ref)
                worker["in_flight"] -= len(batch[0])
            try:
                rows, good, total = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as error:
                # the model or its post-processing raised: the run ends, as in one process
                src = self.ds.get_item_loc(batch[0][0])
                more = f" and {len(batch[0]) - 1} more" if len(batch[0]) > 1 else ""
                self.failfast.fail(
                    f"inference failed on {src}{more} in worker {worker['worker']} on node "
                    f"{worker['node']}: {describe(error.cause or error)}",
                )
            except self.ray.exceptions.RayError as error:
                with self.lock:
                    self.pending.appendleft(batch)  # sent again, to the others
                self.lose(worker, error)
                with self.lock:
                    self.dispatch()
                continue
            self.answer(worker, batch, sent, rows, good, total)
            with self.lock:
                self.dispatch()

    def answer(self, worker, batch, sent, rows, good, total):
        indices, ids, issued = batch
        self.post_proc.good += good
        self.post_proc.total += total
        self.post_proc.content_ids.extend(indices)
        if self.take_accuracy:
            self.post_proc.add_results(rows)
        self.result_timing.append(time.time() - issued)  # as the harness: from the issue
        self.lg.QuerySamplesComplete(
            [
                self.lg.QuerySampleResponse(query_id, row.ctypes.data, row.nbytes)
                for query_id, row in zip(ids, rows)
            ]
        )
        worker["answered"] += len(indices)
        if self.watchdog:
            # the inference's own time, not the time it waited here for a worker
            self.watchdog.completed(len(indices), time.time() - sent)
        if self.progress:
            self.progress.add(len(indices))

    def lose(self, worker, error):
        with self.lock:
            if not worker["alive"]:
                return
            worker["alive"] = False
            reason = describe(getattr(error, "cause", None) or error)
            self.lost.append({"worker": worker["worker"], "node": worker["node"], "reason": reason})
            left = len(self.alive())
        print(
            f"ray_sut: worker {worker['worker']} on node {worker['node']} lost ({reason}): "
            f"its samples go to the {left} left",
            flush=True,
        )
        self.write_record()
        if not left:
            self.failfast.fail(
                f"no worker left: the last, worker {worker['worker']} on node {worker['node']}, "
                f"was lost ({reason})"
            )

    # -- records and the end -----------------------------------------------------------

    def write_record(self):
        from retinanet.files import write_json

        keep = ("worker", "node", "node_id", "address", "host", "pid", "device", "data_dir")
        keep += ("versions",)
        write_json(
            os.path.join(os.path.abspath(self.args.output), WORKERS),
            {
                "ray_address": self.args.ray_address,
                "start_seconds": self.start_seconds and round(self.start_seconds, 2),
                "workers": [
                    {
                        **{k: w.get(k) for k in keep},
                        "answered": w["answered"],
                        "lost": not w["alive"],
                    }
                    for w in self.workers
                ],
                "lost": self.lost,
            },
        )

    def shutdown(self):
        self.done.put(None)
        if self.ray.is_initialized():
            self.ray.shutdown()
