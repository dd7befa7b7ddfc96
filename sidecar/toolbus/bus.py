"""The tool bus: who may call what, argument checks, limits, execution and the record.

Every call — from the API, an agent or a replay — goes through ``ToolBus.invoke``, so
the same hash, limits and log apply whoever asked.

Record first, then run: the call's intent (hash, arguments, token name) is written to
the tool log before the tool runs. If that write fails (disk full, read-only, I/O error)
the tool does not run and the caller gets a 503 ``storage_unavailable``; no side effect
ever happens unrecorded. If the outcome cannot be written, the caller gets the same 503,
saying the tool ran and is recorded only as started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from rfc8785 import CanonicalizationError

from ..auth.scope import allows_tool
from ..config.schema import GatewayConfig, ToolSpec
from ..errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    StorageUnavailable,
    StrictJsonError,
    ToolFailure,
)
from ..routing.admission import Admission
from ..routing.registry import RegistryHolder
from ..storage import RETRY_AFTER_S, StorageMonitor
from ..wire import strict_json
from .executors import BUILTIN_CHECKS, BUILTINS, Builtin, ToolContext, execute
from .hashing import new_id, request_hash
from .log import LookupBusy, ToolLog

log = logging.getLogger("gateway.tools")

MAX_SCHEMA_PROBLEMS = 20  # schema violations a 400 lists
_PROBLEM_CHARS = 300  # of each violation's message (one can quote a whole value)


@dataclass(frozen=True)
class ToolCall:
    """One recorded invocation, as the API returns it."""

    replay_id: str
    request_hash: str
    tool: str
    version: str
    arguments: Any
    ok: bool
    result: Any
    error: dict[str, str] | None
    duration_ms: float

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "replay_id": self.replay_id,
            "request_hash": self.request_hash,
            "tool": self.tool,
            "version": self.version,
            "ok": self.ok,
            "duration_ms": self.duration_ms,
        }
        if self.ok:
            body["result"] = self.result
        else:
            body["error"] = self.error
        return body


class ToolBus:
    def __init__(
        self,
        registry: RegistryHolder,
        log: ToolLog,
        environ: Mapping[str, str],
        allowlist: frozenset[str] | None,
        builtins: Mapping[str, Builtin] = BUILTINS,
        observer: Callable[[str, bool, float], None] | None = None,
        storage: StorageMonitor | None = None,
        protected: tuple[Path, ...] = (),
    ) -> None:
        self._observer = observer
        self._protected = protected
        self._storage = storage
        self._registry = registry
        self._builtins = builtins
        self.log = log
        self._environ = environ
        self._allowlist = allowlist
        self._tools: Mapping[str, ToolSpec] = {}
        self._token_tools: Mapping[str, frozenset[str]] = {}
        self._admissions: dict[str, Admission] = {}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def configure(self, config: GatewayConfig) -> None:
        """Take the tools of a (re)loaded config; limits of unchanged tools carry over."""
        admissions = {}
        for name, spec in config.tools.items():
            admission = self._admissions.get(name)
            if admission is None:
                admission = Admission(f"tool '{name}'", spec.concurrency, code="tool_overloaded")
            else:
                admission.reconfigure(spec.concurrency, 0, 0)
            admissions[name] = admission
        self._validators = {
            name: jsonschema.Draft202012Validator(dict(spec.parameters))
            for name, spec in config.tools.items()
        }
        self._tools, self._token_tools, self._admissions = (
            config.tools,
            config.token_tools,
            admissions,
        )

    def visible(self, token: str | None) -> list[ToolSpec]:
        return [spec for name, spec in self._tools.items() if self._allowed(name, token)]

    def spec(self, name: str, token: str | None) -> ToolSpec:
        spec = self._tools.get(name)
        if spec is None:
            raise NotFound(
                f"No tool named '{name}'; GET /v1/tools lists them", code="tool_not_found"
            )
        if not self._allowed(name, token):
            raise Forbidden(f"This token may not call tool '{name}'", code="tool_not_allowed")
        return spec

    def _allowed(self, name: str, token: str | None) -> bool:
        if self._allowlist is not None and name not in self._allowlist:
            return False
        if not allows_tool(name):  # the calling API key's tools scope
            return False
        allowed = self._token_tools.get(token or "")
        return allowed is None or name in allowed

    def check_arguments(
        self,
        spec: ToolSpec,
        arguments: Any,
        validator: jsonschema.Draft202012Validator | None = None,
    ) -> None:
        """400 listing the schema violations (the first ``MAX_SCHEMA_PROBLEMS``), each
        with where it is.

        Arguments JSON cannot carry or RFC 8785 cannot hash (NaN, inf, lone surrogates,
        integers past 2**53) are refused here, before the tool runs, whoever sent them.
        Blocking (a walk of the whole value): ``invoke`` runs it in a worker thread.
        """
        try:
            strict_json.check_value(arguments, safe_integers=True)
        except StrictJsonError as exc:
            raise InvalidRequest(
                f"arguments cannot be recorded: {exc.message}",
                param="arguments",
                code="invalid_arguments",
            ) from None
        if validator is None:
            validator = self._validators[spec.name]
        # Only the first few: a big array of bad items would otherwise keep one error
        # object per item (a million items: 3.5 GB and half a minute) and echo them all.
        errors = sorted(
            itertools.islice(validator.iter_errors(arguments), MAX_SCHEMA_PROBLEMS + 1),
            key=lambda e: list(e.path),
        )
        if errors:
            problems = "; ".join(
                f"{'/'.join(str(p) for p in error.absolute_path)[:200] or '(arguments)'}: "
                f"{_clip(error.message)}"
                for error in errors[:MAX_SCHEMA_PROBLEMS]
            )
            if len(errors) > MAX_SCHEMA_PROBLEMS:
                problems += f"; and more (only the first {MAX_SCHEMA_PROBLEMS} are listed)"
            raise InvalidRequest(
                f"arguments do not match the schema of '{spec.name}': {problems}",
                param="arguments",
                code="invalid_arguments",
            )
        check = BUILTIN_CHECKS.get(spec.builtin or "") if spec.executor == "builtin" else None
        if check is not None:
            check(arguments)

    async def invoke(
        self, name: str, arguments: Any, *, token: str | None, request_id: str
    ) -> ToolCall:
        """Check, admit (429 when the tool is at its limit), run, record."""
        spec = self.spec(name, token)
        # Before the await: a reload may swap the tables.
        admission, validator = self._admissions[name], self._validators[name]
        # Off the loop: arguments may be megabytes (the walks and the schema are Python).
        hashed = await asyncio.to_thread(self._checked_hash, spec, arguments, validator)
        slot = await admission.acquire()
        try:
            return await self._run(spec, arguments, hashed, token, request_id)
        finally:
            slot.release()

    def _checked_hash(
        self, spec: ToolSpec, arguments: Any, validator: jsonschema.Draft202012Validator
    ) -> str:
        """The call's request hash, once its arguments passed every check. Blocking."""
        self.check_arguments(spec, arguments, validator)
        return _hash_arguments(spec, arguments)

    async def _run(
        self, spec: ToolSpec, arguments: Any, hashed: str, token: str | None, request_id: str
    ) -> ToolCall:
        replay_id = new_id("tool")
        intent = {
            "ts": round(time.time(), 3),
            "phase": "started",
            "replay_id": replay_id,
            "request_hash": hashed,
            "tool": spec.name,
            "version": spec.version,
            "arguments": arguments,
            "token": token,
            "request_id": request_id,
        }
        await self._record(
            intent,
            "The tool was not run: its call could not be recorded (the gateway's storage is"
            " full or not writable); try again later",
        )
        context = ToolContext(self._registry, self._environ, request_id, self._protected)
        started = time.perf_counter()

        def ended(ok: bool, result: Any, error: dict[str, Any] | None) -> ToolCall:
            return ToolCall(
                replay_id=replay_id,
                request_hash=hashed,
                tool=spec.name,
                version=spec.version,
                arguments=arguments,
                ok=ok,
                result=result,
                error=error,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

        ok, result, error = True, None, None
        invalid = {
            "type": "invalid_result",
            "message": "the tool returned a value JSON cannot carry",
        }
        checking: asyncio.Future[bool] | None = None
        try:
            async with asyncio.timeout(spec.timeout_s):
                result = await execute(spec, arguments, context, self._builtins)
            # NaN/inf would break the record and answer; off the loop: it may be megabytes.
            checking = asyncio.ensure_future(asyncio.to_thread(strict_json.is_strict, result))
            if not await asyncio.shield(checking):
                raise ToolFailure(invalid["type"], invalid["message"])
        except asyncio.CancelledError:
            # Cut off from outside (an agent's deadline, a client that left). Stopped while
            # it ran, that is its outcome; ended, with only its result's check left, it is
            # what the tool did. Without a record the call would read "may have run"
            # forever. The write goes on in its thread even if cancelled again.
            if checking is None:
                error = {"type": "cancelled", "message": "the call was cancelled before it ended"}
                outcome = ended(False, None, error)
            elif await checking:
                outcome = ended(True, result, None)
            else:
                outcome = ended(False, None, invalid)
            if self._observer is not None:
                self._observer(outcome.tool, outcome.ok, outcome.duration_ms)
            with contextlib.suppress(GatewayError):
                await self._record(self._outcome(outcome, token, request_id), "")
            raise
        except TimeoutError:
            ok, error = (
                False,
                {"type": "timeout", "message": f"no result within {spec.timeout_s} s"},
            )
        except ToolFailure as exc:
            ok, error = False, {"type": exc.kind, "message": exc.message}
        except GatewayError as exc:  # a builtin's own refusal; its message is client-safe
            ok, error = False, {"type": exc.code or "failed", "message": exc.message}
        except Exception:
            # The intent is on record: a bug in a tool or its executor must still leave an
            # outcome, or the call would read as "may have run" forever.
            log.exception("tool %s failed unexpectedly (replay id %s)", spec.name, replay_id)
            ok, error = False, {"type": "internal_error", "message": "the tool failed unexpectedly"}
        call = ended(ok, result, error)
        record = self._outcome(call, token, request_id)
        if self._observer is not None:
            self._observer(call.tool, call.ok, call.duration_ms)
        await self._record(
            record,
            f"The tool ran, but its outcome could not be recorded (the gateway's storage is"
            f" full or not writable); replay id {replay_id} is recorded as started only",
        )
        return call

    @staticmethod
    def _outcome(call: ToolCall, token: str | None, request_id: str) -> dict[str, Any]:
        """The record of a call's outcome (its second record, after the intent)."""
        return {
            "ts": round(time.time(), 3),
            "phase": "finished",
            **call.response(),
            "arguments": call.arguments,
            "token": token,
            "request_id": request_id,
        }

    async def _record(self, record: dict[str, Any], message: str) -> None:
        """Write one record of the log, or raise the 503 with ``message``."""
        try:
            await asyncio.to_thread(self.log.write, record)
        except OSError as exc:
            if self._storage is None:
                raise StorageUnavailable(message, retry_after=RETRY_AFTER_S) from None
            raise self._storage.unavailable(exc, "tool log", message) from None

    async def recorded(self, replay_id: str, *, token: str | None, admin: bool) -> dict[str, Any]:
        """The record of a call, for the token name that made it or an admin token.

        Anyone else gets the same 404 as for an id that does not exist, so a record's
        existence is not confirmed to other callers.
        """
        try:
            record = await asyncio.to_thread(self.log.get, replay_id)
        except LookupBusy:
            raise RateLimited(
                "Another look-up of an old tool record is running; try again shortly",
                code="lookup_busy",
                retry_after=1,
            ) from None
        if record is None or not (admin or (token is not None and record.get("token") == token)):
            raise NotFound(f"No recorded tool call '{replay_id}'", code="replay_not_found")
        return record

    async def replay(
        self, replay_id: str, *, token: str | None, request_id: str, admin: bool = False
    ) -> dict[str, Any]:
        """Run a recorded call again and say whether the outcome matches."""
        record = await self.recorded(replay_id, token=token, admin=admin)
        spec = self.spec(record["tool"], token)
        call = await self.invoke(spec.name, record["arguments"], token=token, request_id=request_id)
        recorded_outcome = record.get("result") if record.get("ok") else record.get("error")
        new_outcome = call.result if call.ok else call.error
        return {
            "original_replay_id": replay_id,
            "replay": call.response(),
            "request_hash_matches": call.request_hash == record.get("request_hash"),
            "version_matches": spec.version == record.get("version"),
            "recorded_complete": record.get("complete", True),
            "matches": call.ok == record.get("ok") and new_outcome == recorded_outcome,
        }


def _hash_arguments(spec: ToolSpec, arguments: Any) -> str:
    """The call's request hash (blocking: arguments may be megabytes); arguments that
    have no canonical JSON form (a lone surrogate, an integer beyond 2**53, a non-finite
    number) are a 400 before anything is recorded or run."""
    try:
        return request_hash(spec.name, spec.version, arguments)
    except CanonicalizationError as exc:
        raise InvalidRequest(
            f"arguments of '{spec.name}' have no canonical JSON form: {exc}",
            param="arguments",
            code="invalid_arguments",
        ) from None


def _clip(text: str) -> str:
    return text if len(text) <= _PROBLEM_CHARS else text[:_PROBLEM_CHARS] + "..."
