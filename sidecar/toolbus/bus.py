"""The tool bus: who may call what, argument checks, limits, execution and the record.

Every call — from the API, an agent or a replay — goes through ``ToolBus.invoke``, so
the same hash, limits and log apply whoever asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from ..api import strict_json
from ..config.schema import GatewayConfig, ToolSpec
from ..errors import Forbidden, InvalidRequest, NotFound
from ..routing.admission import Admission
from ..routing.registry import RegistryHolder
from .executors import BUILTINS, Builtin, ToolContext, ToolFailure, execute
from .hashing import new_id, request_hash
from .log import ToolLog


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
    ) -> None:
        self._observer = observer
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
        allowed = self._token_tools.get(token or "")
        return allowed is None or name in allowed

    def check_arguments(self, spec: ToolSpec, arguments: Any) -> None:
        """400 listing every schema violation, each with where it is.

        Arguments JSON cannot carry or RFC 8785 cannot hash (NaN, inf, lone surrogates,
        integers past 2**53) are refused here, before the tool runs, whoever sent them.
        """
        try:
            strict_json.check_value(arguments, safe_integers=True)
        except strict_json.StrictJsonError as exc:
            raise InvalidRequest(
                f"arguments cannot be recorded: {exc.message}",
                param="arguments",
                code="invalid_arguments",
            ) from None
        errors = sorted(
            self._validators[spec.name].iter_errors(arguments), key=lambda e: list(e.path)
        )
        if errors:
            problems = "; ".join(
                f"{'/'.join(str(p) for p in error.absolute_path) or '(arguments)'}: {error.message}"
                for error in errors
            )
            raise InvalidRequest(
                f"arguments do not match the schema of '{spec.name}': {problems}",
                param="arguments",
                code="invalid_arguments",
            )

    async def invoke(
        self, name: str, arguments: Any, *, token: str | None, request_id: str
    ) -> ToolCall:
        """Check, admit (429 when the tool is at its limit), run, record."""
        spec = self.spec(name, token)
        self.check_arguments(spec, arguments)
        slot = await self._admissions[name].acquire()
        try:
            return await self._run(spec, arguments, token, request_id)
        finally:
            slot.release()

    async def _run(
        self, spec: ToolSpec, arguments: Any, token: str | None, request_id: str
    ) -> ToolCall:
        context = ToolContext(self._registry, self._environ, request_id)
        started = time.perf_counter()
        ok, result, error = True, None, None
        try:
            async with asyncio.timeout(spec.timeout_s):
                result = await execute(spec, arguments, context, self._builtins)
            if not strict_json.is_strict(result):  # NaN/inf would break the record and answer
                raise ToolFailure("invalid_result", "the tool returned a value JSON cannot carry")
        except TimeoutError:
            ok, error = (
                False,
                {"type": "timeout", "message": f"no result within {spec.timeout_s} s"},
            )
        except ToolFailure as exc:
            ok, error = False, {"type": exc.kind, "message": exc.message}
        call = ToolCall(
            replay_id=new_id("tool"),
            request_hash=request_hash(spec.name, spec.version, arguments),
            tool=spec.name,
            version=spec.version,
            arguments=arguments,
            ok=ok,
            result=result,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        record = {
            "ts": round(time.time(), 3),
            **call.response(),
            "arguments": arguments,
            "token": token,
            "request_id": request_id,
        }
        await asyncio.to_thread(self.log.write, record)
        if self._observer is not None:
            self._observer(call.tool, call.ok, call.duration_ms)
        return call

    async def recorded(self, replay_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.log.get, replay_id)
        if record is None:
            raise NotFound(f"No recorded tool call '{replay_id}'", code="replay_not_found")
        return record

    async def replay(self, replay_id: str, *, token: str | None, request_id: str) -> dict[str, Any]:
        """Run a recorded call again and say whether the outcome matches."""
        record = await self.recorded(replay_id)
        spec = self.spec(record["tool"], token)
        call = await self.invoke(spec.name, record["arguments"], token=token, request_id=request_id)
        recorded_outcome = record.get("result") if record.get("ok") else record.get("error")
        new_outcome = call.result if call.ok else call.error
        return {
            "original_replay_id": replay_id,
            "replay": call.response(),
            "request_hash_matches": call.request_hash == record.get("request_hash"),
            "version_matches": spec.version == record.get("version"),
            "matches": call.ok == record.get("ok") and new_outcome == recorded_outcome,
        }
