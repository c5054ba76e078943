"""Run the auxiliaries' work at the same time: one worker thread per auxiliary.

An auxiliary's step is mostly a forward pass, and torch releases the GIL inside its
kernels (so does a network call), so auxiliaries on one machine overlap with each other
and with the primary's own forward pass. Each worker sets its own torch thread count
(`torch.set_num_threads` is per thread in torch's CPU builds), so that models running at
once do not oversubscribe the cores.

`Workers(concurrent=False)` runs the same jobs inline, one after another: the reference
path, and what the tests compare against.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .checks import check_int
from .errors import MemberError

__all__ = ["MemberError", "Round", "Workers", "default_member_threads", "start_worker_thread"]


def start_worker_thread(threads: int | None = None) -> None:
    """Set up a worker thread: Ctrl-C and termination signals stay with the main thread, and
    (if given) its own torch thread count.

    Blocking the signals here keeps the kernel from delivering SIGINT to a worker (or to
    the OpenMP threads it starts, which inherit the mask), where it would not interrupt the
    main thread's blocking read of a prompt.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    if threads is not None:
        torch.set_num_threads(threads)


def default_member_threads() -> int:
    """Torch threads per auxiliary worker: as many as the calling thread (the primary's) uses.

    Measured on 2 cores (SmolLM2 + Gemma 3, batch 1): primary 2 threads and the auxiliary 1
    gave 0.98 x the sum of the members alone, 2 and 2 gave 0.81, 1 and 1 gave 0.70 (so
    ``torch.set_num_threads(1)`` for the primary pays on a 2-core machine).
    """
    return max(1, torch.get_num_threads())


class Round:
    """Jobs handed to the workers together; `Workers.wait` collects them."""

    def __init__(self, futures: list[Future[float] | None], inline: list[float | BaseException | None]) -> None:
        self.futures = futures
        self.inline = inline


class Workers:
    """One worker per auxiliary (or inline, one after another, when not ``concurrent``).

    Args:
        names: the auxiliaries' names, for errors.
        concurrent: run each auxiliary's jobs on its own thread.
        threads: torch threads of each worker (None: `default_member_threads`, read when the
            workers are built).
    """

    def __init__(self, names: Sequence[str], concurrent: bool = True, threads: int | None = None) -> None:
        if threads is not None:
            check_int("member_threads", threads, minimum=1)
        self.names = list(names)
        self.concurrent = concurrent and bool(names)
        self.threads = threads or default_member_threads()
        self._pools: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    def _pool(self, index: int) -> ThreadPoolExecutor:
        with self._lock:
            while len(self._pools) <= index:
                self._pools.append(
                    ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix=f"unite-logits-{self.names[len(self._pools)]}",
                        initializer=start_worker_thread, initargs=(self.threads,),
                    )
                )
            return self._pools[index]

    def start(self, jobs: Sequence[Callable[[], object] | None]) -> Round:
        """Start ``jobs[i]`` on auxiliary ``i``'s worker (None: nothing for it)."""
        if not self.concurrent:
            return Round([None] * len(jobs), [_timed_or_error(job) if job else None for job in jobs])
        futures: list[Future[float] | None] = [
            self._pool(index).submit(_timed, job) if job else None for index, job in enumerate(jobs)
        ]
        return Round(futures, [None] * len(jobs))

    def wait(self, round_: Round) -> list[float]:
        """Seconds each auxiliary's job took (0 for none); a failed job raises `MemberError`
        (or its own error, if that already names the member: `RemoteMemberError`).

        Every job is waited for, even after one failed, so no worker still touches the
        state when this returns or raises.
        """
        seconds: list[float] = []
        failure: tuple[int, BaseException] | None = None
        for index, (future, inline) in enumerate(zip(round_.futures, round_.inline)):
            try:
                outcome: float | BaseException | None = future.result() if future is not None else inline
            except BaseException as raised:  # noqa: BLE001 - re-raised below, naming the member
                outcome = raised
            if isinstance(outcome, BaseException):
                failure = failure or (index, outcome)
                seconds.append(0.0)
            else:
                seconds.append(outcome or 0.0)
        if failure is not None:
            index, error = failure
            if isinstance(error, (KeyboardInterrupt, SystemExit)) or getattr(error, "member", None) == self.names[index]:
                raise error  # an interrupt, or an error that already names the member (a served one's)
            raise MemberError(f"auxiliary {self.names[index]!r} failed: {type(error).__name__}: {error}") from error
        return seconds

    def wait_quietly(self, round_: Round) -> None:
        """Wait for every job of ``round_``, ignoring their failures (when another error is
        already on its way: no worker may still touch the state afterwards)."""
        for future in round_.futures:
            if future is not None:
                try:
                    future.result()
                except BaseException:  # noqa: BLE001 - the error on its way is the one reported
                    pass

    def close(self) -> None:
        """Stop the worker threads (waiting for a job in flight). Idempotent."""
        with self._lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.shutdown(wait=True)


def _timed(job: Callable[[], object]) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def _timed_or_error(job: Callable[[], object]) -> float | BaseException:
    try:
        return _timed(job)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - reported by Workers.wait, naming the member
        return error
