"""Forked worker processes for the input pipeline's numpy work (no TensorFlow here).

The pipeline's per-image loading (decode, load_mask, resize, imgaug, mini masks) is numpy,
PIL, scikit-image and OpenCV code that mostly holds the GIL, so threads cannot spread it
over cores. ``WorkerPool`` runs one function in forked processes instead:

* fork, not spawn: a user's Dataset subclass defined in a script's ``__main__`` cannot be
  pickled for spawn, while a forked child inherits it. A fork of a process that runs
  TensorFlow is safe only if the child never touches TensorFlow: the function given must
  be pure numpy / Python (mrcnn.data's loader is). Where fork is unavailable (Windows,
  macOS' default), ``default_workers`` is 0 and the pipeline stays in-process.
* the pool starts lazily (first ``submit``), restarts a worker set that lost a process,
  and is closed for good by
  ``close``, by ``closing_scope`` (train() uses it), when garbage collected, or at exit;
  workers ignore SIGINT (the parent handles Ctrl-C and closes them) and exit when their
  parent disappears.
* a call's exception travels back and is raised by ``Future.result()`` (as a
  ``WorkerError`` holding the text and traceback when it cannot be pickled); a worker that
  dies fails its pending calls with a WorkerError.
"""

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import threading
import traceback
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np

_SCOPES = []                    # open closing_scope lists, innermost last


class WorkerError(RuntimeError):
    """A worker call failed with an exception that could not come back as itself, or the
    worker process died."""


class PoolClosedError(WorkerError):
    """A call to a closed pool, or one pending when it was closed."""


def default_workers():
    """Processes the pipeline uses by default: the cores this process may run on, 0 (no
    workers: in-process loading) with one core or where fork is unavailable."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return cores if cores > 1 else 0


@contextlib.contextmanager
def closing_scope():
    """Close every WorkerPool created inside the block when it exits (normally, by an
    exception or by KeyboardInterrupt)."""
    pools = []
    _SCOPES.append(pools)
    try:
        yield pools
    finally:
        _SCOPES.remove(pools)
        for pool in pools:
            pool.close()


class WorkerPool(object):
    """``processes`` forked workers calling ``fn(*args)``; ``submit`` returns a Future."""

    def __init__(self, fn, processes):
        self._fn = fn
        self.processes = int(processes)
        # Shared with the result thread, which must not keep the pool alive (finalizer).
        self._state = _State()
        for scope in _SCOPES:
            scope.append(self)
        weakref.finalize(self, self._state.stop)

    @property
    def pids(self):
        """Process ids of the running workers."""
        return [p.pid for p, _, _ in self._state.workers]

    def submit(self, *args):
        """Run fn(*args) in the least busy worker; returns a concurrent.futures.Future."""
        state = self._state
        future = concurrent.futures.Future()
        with state.lock:
            if state.shut:
                raise PoolClosedError("input pipeline workers were closed")
            if any(not p.is_alive() for p, _, _ in state.workers):
                # A worker died (its calls failed): start afresh.
                state.closed.set()
                _stop(state.workers, state.pending)
            if not state.workers:
                state.start(self._fn, self.processes)
            busy = [0] * len(state.workers)
            for _, index in state.pending.values():
                busy[index] += 1
            index = busy.index(min(busy))
            task = next(state.ids)
            state.pending[task] = (future, index)
            state.workers[index][1].send((task, args))
        return future

    def close(self):
        """Stop the workers for good: pending and later calls raise PoolClosedError."""
        self._state.stop()


class _State(object):
    """A pool's processes, pipes and pending futures, and its result thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.workers = []          # [(process, task conn, result conn)]
        self.pending = {}          # task id -> (future, worker index)
        self.ids = itertools.count()
        self.closed = threading.Event()
        self.thread = None
        self.owner = os.getpid()
        self.shut = False

    def start(self, fn, processes):
        ctx = multiprocessing.get_context("fork")
        parent = os.getpid()
        for _ in range(processes):
            task_recv, task_send = ctx.Pipe(duplex=False)
            result_recv, result_send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_worker_main, daemon=True,
                                  args=(fn, task_recv, result_send, parent))
            process.start()
            task_recv.close()
            result_send.close()
            self.workers.append((process, task_send, result_recv))
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.dispatch, daemon=True,
                                       args=(list(self.workers), self.closed),
                                       name="mrcnn-worker-results")
        self.thread.start()

    def stop(self):
        if os.getpid() != self.owner:
            # A forked child's copy (e.g. collected when the threads that referenced it
            # vanished at fork) must not stop its parent's workers.
            return
        with self.lock:
            self.shut = True
            self.closed.set()
            thread, self.thread = self.thread, None
            _stop(self.workers, self.pending)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def dispatch(self, workers, closed):
        """Route results to their futures; fail the calls of a worker that died."""
        waitables = {conn: i for i, (_, _, conn) in enumerate(workers)}
        waitables.update({p.sentinel: i for i, (p, _, _) in enumerate(workers)})
        while waitables and not closed.is_set():
            try:
                ready_list = multiprocessing.connection.wait(list(waitables), timeout=0.5)
            except OSError:      # closed under us by stop()
                return
            for ready in ready_list:
                if ready not in waitables:
                    continue
                index = waitables[ready]
                if ready is workers[index][2]:
                    self.receive(ready)
                else:
                    self.worker_died(workers[index][0], index, waitables)

    def receive(self, conn):
        try:
            task, ok, payload = conn.recv()
        except (EOFError, OSError):
            return    # the worker died; its sentinel reports it
        with self.lock:
            future, _ = self.pending.pop(task, (None, None))
        if future is None:
            return
        if ok:
            future.set_result(payload)
        else:
            future.set_exception(payload)

    def worker_died(self, process, index, waitables):
        for key in [k for k, i in waitables.items() if i == index]:
            del waitables[key]
        with self.lock:
            lost = [t for t, (_, i) in self.pending.items() if i == index]
            futures = [self.pending.pop(t)[0] for t in lost]
        process.join(timeout=1)
        for future in futures:
            future.set_exception(WorkerError(
                "input pipeline worker process {} died (exit code {})".format(
                    process.pid, process.exitcode)))


def _stop(workers, pending):
    """Terminate the worker processes and fail their pending calls."""
    for process, task_conn, _ in workers:
        with contextlib.suppress(OSError):
            task_conn.send(None)
    for process, task_conn, result_conn in workers:
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        task_conn.close()
        result_conn.close()
    del workers[:]
    for future, _ in list(pending.values()):
        if not future.done():
            future.set_exception(PoolClosedError("input pipeline workers were closed"))
    pending.clear()


def _worker_main(fn, tasks, results, parent):
    """A worker's loop: fn(*args) per task until None, EOF or the parent's exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _reseed()
    while True:
        if not tasks.poll(1.0):
            if os.getppid() != parent:
                return
            continue
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, args = message
        reply = _run(fn, task, args)
        try:
            results.send(reply)
        except Exception as e:    # a result that cannot be pickled
            results.send((task, False, WorkerError(
                "the result of an input pipeline worker cannot be sent: {}".format(e))))


def _run(fn, task, args):
    """(task, True, fn(*args)) or (task, False, the exception, as a WorkerError if it does
    not survive pickling)."""
    try:
        return task, True, fn(*args)
    except Exception as e:
        try:
            # The pipe pickles it; trusted data of our own child process.
            ForkingPickler.loads(ForkingPickler.dumps(e))
            return task, False, e
        except Exception:
            return task, False, WorkerError("{}: {}\n{}".format(
                type(e).__name__, e, traceback.format_exc()))


def _reseed():
    """Forked children share the parent's global random states: give each its own, so
    unseeded draws (Python's random for "crop" mode, numpy's legacy global RNG) differ."""
    random.seed()
    np.random.seed(int.from_bytes(os.urandom(4), "little"))
