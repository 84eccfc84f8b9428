"""The host's entry point: ``start()``, ``Runtime`` and ``JobHandle``.

Owns the bridge between host threads and the actor system: starting the hub
and the runtime's actors, turning host calls into messages with a reply box
and a timeout, waking ``JobHandle.wait`` when a job ends, and an orderly
``stop``. Every public method is safe to call from any host thread, several at
once. Scores are loaded and planned here, on the caller's thread, so bad input
raises at once and changes nothing.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from loguru import logger
from pykka import ActorDeadError, ActorRef

from actors.backends.base import BackendSpec
from actors.backends.cli import default_backends
from actors.base import ActorContext, ActorRegistry
from actors.bus import EventBus
from actors.hub import HubClock, HubThread
from actors.persistence import Persistence
from actors.pool import BackendPool
from actors.supervisor import Supervisor, check_job_id
from runtime import journal
from runtime.clock import Clock, ManualClock
from runtime.errors import (
    CallTimeoutError,
    ConfigError,
    EnsembleError,
    JobNotFoundError,
    PersistenceError,
    RuntimeStoppedError,
    UnknownInstrumentError,
)
from runtime.events import Event
from runtime.instruments import InstrumentProfile, load_profiles, raw_prompt_instruments
from runtime.machine import FERMATA_DECISIONS
from runtime.messages import (
    ClearRateLimits,
    JobCommand,
    RecoverJob,
    Reply,
    SubmitJob,
    Subscribe,
    Unsubscribe,
)
from runtime.plan import DEFAULT_RAW_PROMPT_INSTRUMENTS, Plan, build_plan
from runtime.policy import policy_from_plan
from runtime.prompts import PromptTemplate
from runtime.score import Score, load_score, score_from_mapping
from runtime.state import FINAL_JOB_STATUSES, JobProgress, JobResult, SheetState

DEFAULT_CALL_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def start(
    state_dir: str | Path = ".ensemble-state",
    *,
    backends: Mapping[str, BackendSpec] | None = None,
    max_concurrent_sheets: int = 10,
    clock: Clock | None = None,
    durability: str = "fsync",
    recover: bool = False,
    self_healing: bool = False,
    escalation: bool = False,
    profiles: Mapping[str, InstrumentProfile] | None = None,
) -> Runtime:
    """Start a runtime whose checkpoints live in ``state_dir``.

    Every instrument profile (Ensemble's built-ins, then
    ``~/.ensemble/instruments/``, then ``./.ensemble/instruments/``, or
    ``profiles`` when given) gets a backend; ``backends`` maps instrument
    names to backend specs that add to or replace them (``CliBackend``,
    ``runtime.testing.ScriptedBackend``, ...). ``self_healing`` and ``escalation`` are
    the defaults for S15 (one extra attempt; a fermata for a human) that
    ``submit`` may override per job.

    ``durability="fsync"`` (the default) fsyncs every group commit;
    ``"process"`` only hands it to the OS before effects are released, which
    survives a killed process but not a power cut. With ``recover=True`` every
    unfinished job in ``state_dir`` resumes from its checkpoint (S29); see
    ``Runtime.recovered`` and ``Runtime.recovery_errors``. Use the result as a
    context manager, or call ``stop()``.
    """
    if max_concurrent_sheets < 1:
        raise EnsembleError("max_concurrent_sheets must be at least 1")
    if durability not in DURABILITY_SETTINGS:
        raise EnsembleError(
            f"durability must be one of {', '.join(DURABILITY_SETTINGS)}, not {durability!r}"
        )
    if profiles is None:
        profiles = load_profiles()
    return Runtime(
        Path(state_dir),
        backends={**default_backends(profiles), **(backends or {})},
        raw_prompt_instruments=raw_prompt_instruments(profiles),
        max_concurrent_sheets=max_concurrent_sheets,
        clock=clock,
        fsync=durability == "fsync",
        self_healing=self_healing,
        escalation=escalation,
        recover=recover,
    )


DURABILITY_SETTINGS = ("fsync", "process")


class _ReplyBox:
    """Receives one ``Reply`` from an actor into a host thread."""

    __slots__ = ("_event", "_reply")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reply: Reply | None = None

    def tell(self, message: Any) -> None:
        self._reply = message
        self._event.set()

    def wait(self, timeout: float, what: str) -> Any:
        if not self._event.wait(timeout):
            raise CallTimeoutError(f"the runtime did not answer '{what}' within {timeout:g} s")
        reply = self._reply
        assert isinstance(reply, Reply)
        if reply.error is not None:
            raise reply.error
        return reply.value


def _lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold ``<state_dir>/.lock`` for the runtime's life: two runtimes on one state
    directory would run sheets twice and interleave journals. The OS drops the
    lock when the process dies, so a crash never leaves it stuck."""
    handle = open(state_dir / ".lock", "a+")  # noqa: SIM115 - held until stop()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise EnsembleError(
            f"the state directory {state_dir} is in use by another Ensemble runtime "
            f"(pid {holder}); stop it first, or use another state directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class _LateRecipient:
    """Forwards to a recipient that exists only later (the supervisor)."""

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: Any = None

    def tell(self, message: Any) -> None:
        if self.target is not None:
            self.target.tell(message)


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: JobResult | None = None
        self.error: EnsembleError | None = None


class Runtime:
    """A running Ensemble: submit scores, wait for jobs, subscribe to events."""

    def __init__(
        self,
        state_dir: Path,
        *,
        backends: Mapping[str, BackendSpec],
        max_concurrent_sheets: int,
        clock: Clock | None,
        fsync: bool,
        self_healing: bool = False,
        escalation: bool = False,
        recover: bool = False,
        raw_prompt_instruments: frozenset[str] = DEFAULT_RAW_PROMPT_INSTRUMENTS,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_state_dir(self.state_dir)
        journal.remove_unfinished_creations(self.state_dir)
        self.raw_prompt_instruments = raw_prompt_instruments
        self.recovered: list[JobHandle] = []
        self.recovery_errors: list[str] = []
        self.self_healing = self_healing
        self.escalation = escalation
        self._backend_specs = dict(backends)
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._subscription_ids = itertools.count(1)
        self._stopped = False
        self._hub = HubThread()
        self.clock: Clock = clock if clock is not None else HubClock(self._hub)
        if isinstance(self.clock, ManualClock):
            self.clock.bind(self._hub.call_soon)
        self.registry = ActorRegistry()
        self._context = ActorContext(self._hub, self.registry, self.clock)
        try:
            self._hub.run(self._start_actors, max_concurrent_sheets, fsync)
        except BaseException:
            self._hub.stop()
            self._lock_file.close()
            raise
        if recover:
            try:
                self.recovered = self.recover()
            except BaseException:
                self.stop()
                raise

    def _start_actors(self, max_concurrent_sheets: int, fsync: bool) -> None:
        context = self._context
        # The services are started before their supervisor; it hears of their
        # crashes through this stand-in, bound once it runs.
        guardian = _LateRecipient()
        self._bus = EventBus.start(context, parent=guardian)
        self._persistence = Persistence.start(
            context, state_dir=self.state_dir, fsync=fsync, parent=guardian
        )
        self._backends = {
            name: spec.start_actor(context, name) for name, spec in self._backend_specs.items()
        }
        limits = {
            name: spec.max_concurrent
            for name, spec in self._backend_specs.items()
            if spec.max_concurrent is not None
        }
        model_limits = {
            (name, model): limit
            for name, spec in self._backend_specs.items()
            for model, limit in getattr(spec, "model_limits", {}).items()
        }
        default_models = {
            name: model
            for name, spec in self._backend_specs.items()
            if (model := getattr(getattr(spec, "profile", None), "default_model", None))
        }
        self._pool = BackendPool.start(
            context,
            backends=self._backends,
            max_concurrent_sheets=max_concurrent_sheets,
            instrument_limits=limits,
            model_limits=model_limits,
            default_models=default_models,
            bus=self._bus,
            persistence=self._persistence,
            breakers=journal.read_runtime_state(self.state_dir).get("breakers", {}),
            parent=guardian,
        )
        self._supervisor = Supervisor.start(
            context,
            state_dir=self.state_dir,
            pool=self._pool,
            persistence=self._persistence,
            bus=self._bus,
            on_job_finished=self._job_finished,
        )
        guardian.target = self._supervisor

    # --- jobs ---------------------------------------------------------------------

    def submit(
        self,
        score: str | Path | Mapping[str, Any] | Score,
        *,
        job_id: str | None = None,
        self_healing: bool | None = None,
        escalation: bool | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> JobHandle:
        """Load, check and start a score; returns at once with the job's handle.

        Raises ``ScoreError`` for an invalid score and ``UnknownInstrumentError``
        when a sheet needs an instrument this runtime has no backend for.
        ``self_healing`` / ``escalation`` override the runtime's defaults (S15).
        """
        self._check_running()
        if job_id is not None:
            check_job_id(job_id)
        loaded = load_score(score)
        plan = build_plan(loaded, raw_prompt_instruments=self.raw_prompt_instruments)
        template = PromptTemplate(loaded.prompt.template or "", variables=loaded.prompt.variables)
        policy = policy_from_plan(
            plan,
            self_healing=self.self_healing if self_healing is None else self_healing,
            escalation=self.escalation if escalation is None else escalation,
        )
        self._check_instruments(plan)
        box = _ReplyBox()
        self._tell_supervisor(SubmitJob(loaded, plan, policy, template, job_id, box))
        new_id: str = box.wait(timeout, "submit")
        self._waiter(new_id)
        return JobHandle(self, new_id)

    def recover(
        self, job_ids: Iterable[str] | None = None, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> list[JobHandle]:
        """S29: resume unfinished jobs of the state directory from their checkpoints
        (all of them, or those named); returns their handles. Finished jobs and
        jobs this runtime is already running are left alone. A job that cannot
        be read is skipped and its error, naming the file, added to
        ``recovery_errors``. Raises ``JobNotFoundError`` for a named job that is
        not in the state directory."""
        self._check_running()
        job_dirs = journal.list_job_dirs(self.state_dir)
        if job_ids is not None:
            wanted = set(job_ids)
            missing = wanted - {job_dir.name for job_dir in job_dirs}
            if missing:
                raise JobNotFoundError(
                    f"no job {', '.join(repr(name) for name in sorted(missing))} "
                    f"in {self.state_dir}"
                )
            job_dirs = [job_dir for job_dir in job_dirs if job_dir.name in wanted]
        with self._lock:
            running_here = {
                job_id for job_id, waiter in self._waiters.items() if not waiter.event.is_set()
            }
        handles: list[JobHandle] = []
        for job_dir in job_dirs:
            if job_dir.name in running_here:
                continue
            try:
                handle = self._recover_one(job_dir, timeout)
            except (EnsembleError, OSError) as exc:
                message = f"job {job_dir.name} was not resumed: {exc}"
                logger.error(message)
                self.recovery_errors.append(message)
                continue
            if handle is not None:
                handles.append(handle)
        return handles

    def _recover_one(self, job_dir: Path, timeout: float) -> JobHandle | None:
        loaded = journal.load_checkpoint(job_dir)
        checkpoint = loaded.checkpoint
        if checkpoint.get("status") in {status.value for status in FINAL_JOB_STATUSES}:
            return None
        snapshot_path = job_dir / journal.SNAPSHOT_FILE
        try:
            score_dir = checkpoint.get("options", {}).get("score_dir")
            score = score_from_mapping(
                loaded.score,
                base_dir=Path(score_dir) if score_dir else Path.cwd(),
                source_name=str(job_dir / journal.SCORE_FILE),
            )
            plan = build_plan(score, raw_prompt_instruments=self.raw_prompt_instruments)
        except ConfigError as exc:
            raise PersistenceError(
                f"the stored score {job_dir / journal.SCORE_FILE} cannot be planned: {exc}"
            ) from None
        if plan.total_sheets != len(checkpoint["sheets"]):
            raise PersistenceError(
                f"{snapshot_path} has {len(checkpoint['sheets'])} sheets but "
                f"its score plans {plan.total_sheets}; the stored score was changed"
            )
        try:
            for record in checkpoint["sheets"]:
                SheetState.from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise PersistenceError(
                f"corrupt checkpoint {snapshot_path} (or its journal): a sheet record "
                f"cannot be read ({type(exc).__name__}: {exc})"
            ) from None
        self._check_instruments(plan)
        options = checkpoint.get("options", {})
        policy = policy_from_plan(
            plan,
            self_healing=bool(options.get("self_healing", False)),
            escalation=bool(options.get("escalation", False)),
        )
        template = PromptTemplate(score.prompt.template or "", variables=score.prompt.variables)
        box = _ReplyBox()
        self._tell_supervisor(RecoverJob(score, plan, policy, template, checkpoint, box))
        job_id: str = box.wait(timeout, f"recover {job_dir.name}")
        self._waiter(job_id)
        return JobHandle(self, job_id)

    def _check_instruments(self, plan: Plan) -> None:
        """Every instrument a plan's sheets may run on has a backend here."""
        missing = sorted(
            (plan.instruments | plan.fallback_instruments) - self._backend_specs.keys()
        )
        if missing:
            known = ", ".join(sorted(self._backend_specs)) or "none"
            raise UnknownInstrumentError(
                f"no backend for instrument {', '.join(repr(m) for m in missing)} "
                f"(this runtime has: {known}); pass one in runtime.start(backends=...) "
                "or set the score's 'instrument'",
                key_path="instrument",
            )

    def job(self, job_id: str) -> JobHandle:
        """A handle to a job this runtime knows."""
        self._check_running()
        self._command(job_id, "progress", DEFAULT_CALL_TIMEOUT)
        return JobHandle(self, job_id)

    def resolve_fermata(
        self, job_id: str, sheet_num: int, decision: str, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> bool:
        """S16: decide about a sheet in fermata: ``retry`` (fresh budgets), ``skip``,
        ``accept`` (completed) or ``fail``. False if the sheet is not in fermata.
        Raises ``ConfigError`` for any other decision, whatever the job's state."""
        if decision not in FERMATA_DECISIONS:
            raise ConfigError(
                f"unknown fermata decision {decision!r}; use one of {', '.join(FERMATA_DECISIONS)}",
                key_path="decision",
            )
        return bool(self._command(job_id, "resolve_fermata", timeout, (sheet_num, decision)))

    def clear_rate_limit(
        self, instrument: str | None = None, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> int:
        """S19: end rate-limit waits at once, for one instrument or all; returns
        how many blocks were cleared."""
        self._check_running()
        box = _ReplyBox()
        self._pool.tell(ClearRateLimits(instrument, box))
        return int(box.wait(timeout, "clear_rate_limit"))

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every observer event, on the runtime's
        delivery thread; returns a function that unsubscribes."""
        self._check_running()
        subscription_id = next(self._subscription_ids)
        self._bus.tell(Subscribe(subscription_id, callback))

        def unsubscribe() -> None:
            if not self._stopped:
                self._bus.tell(Unsubscribe(subscription_id))

        return unsubscribe

    # --- life cycle ---------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every actor of this runtime; running attempts are terminated and
        their sheets resume from the checkpoint next time. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._hub.run(self._stop_actors, timeout, timeout=timeout * 3)
        except Exception:
            logger.exception("error while stopping the runtime's actors")
        self._hub.stop(timeout)
        self._lock_file.close()  # releases the state directory
        with self._lock:
            waiters = list(self._waiters.items())
        for job_id, waiter in waiters:
            if not waiter.event.is_set():
                waiter.error = RuntimeStoppedError(
                    f"the runtime stopped before job '{job_id}' finished; its checkpoint "
                    f"is kept in {self.state_dir}"
                )
                waiter.event.set()

    def _stop_actors(self, timeout: float) -> None:
        # Jobs first (they stop their sheets), then the services they used.
        for ref in (self._supervisor,):
            _stop_and_wait(ref, timeout)
        for ref in self.registry.alive():
            if _is_job_or_sheet(ref):
                _stop_and_wait(ref, timeout)
        for ref in (self._pool, *self._backends.values(), self._persistence, self._bus):
            _stop_and_wait(ref, timeout)
        for ref in self.registry.alive():
            logger.warning("stopping leftover actor {}", ref)
            _stop_and_wait(ref, timeout)

    @property
    def instruments(self) -> frozenset[str]:
        """The instruments this runtime has a backend for."""
        return frozenset(self._backend_specs)

    def alive_actors(self) -> int:
        """How many of this runtime's actors are running (0 after ``stop``)."""
        return len(self.registry.alive())

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise RuntimeStoppedError("this runtime was stopped; start a new one")

    def _tell_supervisor(self, message: Any) -> None:
        # stop() may run in another thread between _check_running and here.
        try:
            self._supervisor.tell(message)
        except ActorDeadError:
            raise RuntimeStoppedError("this runtime was stopped; start a new one") from None

    def _command(
        self, job_id: str, command: str, timeout: float, arguments: tuple[Any, ...] = ()
    ) -> Any:
        self._check_running()
        box = _ReplyBox()
        self._tell_supervisor(JobCommand(job_id, command, box, arguments))
        return box.wait(timeout, f"{command} {job_id}")

    def _waiter(self, job_id: str) -> _Waiter:
        with self._lock:
            waiter = self._waiters.get(job_id)
            if waiter is None:
                waiter = self._waiters[job_id] = _Waiter()
            return waiter

    def _job_finished(self, result: JobResult) -> None:
        waiter = self._waiter(result.job_id)
        waiter.result = result
        waiter.event.set()


class JobHandle:
    """A submitted job, as seen from the host."""

    def __init__(self, runtime: Runtime, job_id: str) -> None:
        self.runtime = runtime
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job is final and return its result.

        Raises ``TimeoutError`` if ``timeout`` seconds pass first and
        ``RuntimeStoppedError`` if the runtime stops first.
        """
        waiter = self.runtime._waiter(self.job_id)
        if not waiter.event.wait(timeout):
            raise TimeoutError(f"job '{self.job_id}' did not finish within {timeout:g} s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def done(self) -> bool:
        """Whether the job has ended (completed, failed or cancelled). A job
        cut short by the runtime's stop has not: it is resumable, and wait()
        says why it returned."""
        waiter = self.runtime._waiter(self.job_id)
        return waiter.event.is_set() and waiter.result is not None

    def status(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> JobProgress:
        """Counts of sheets by status, the job's status and its cost so far."""
        result = self.runtime._command(self.job_id, "progress", timeout)
        if isinstance(result, JobResult):
            return _progress_from_result(result)
        assert isinstance(result, JobProgress)
        return result

    def result(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> JobResult:
        """The job's per-sheet state now (final once ``wait`` returned)."""
        value = self.runtime._command(self.job_id, "result", timeout)
        assert isinstance(value, JobResult)
        return value

    def pause(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> bool:
        """S25: stop dispatching; running attempts finish. False if nothing changed."""
        return bool(self.runtime._command(self.job_id, "pause", timeout))

    def resume(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> bool:
        return bool(self.runtime._command(self.job_id, "resume", timeout))

    def cancel(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> bool:
        """S26: terminate running attempts and end the job cancelled."""
        return bool(self.runtime._command(self.job_id, "cancel", timeout))


def _progress_from_result(result: JobResult) -> JobProgress:
    counts: dict[str, int] = {}
    for sheet in result.sheets.values():
        counts[sheet.status.value] = counts.get(sheet.status.value, 0) + 1
    return JobProgress(
        result.job_id,
        result.name or result.job_id,
        result.status,
        len(result.sheets),
        counts,
        result.cost,
    )


def _stop_and_wait(ref: ActorRef[Any], timeout: float) -> None:
    if ref.is_alive():
        try:
            ref.stop(block=True, timeout=timeout)
        except Exception:
            logger.warning("actor {} did not stop within {} s", ref, timeout)


def _is_job_or_sheet(ref: ActorRef[Any]) -> bool:
    from actors.job import JobActor
    from actors.sheet import SheetActor

    return issubclass(ref.actor_class, JobActor | SheetActor)


__all__ = ["FINAL_JOB_STATUSES", "JobHandle", "JobNotFoundError", "Runtime", "start"]
