"""Local stand-ins for the four preset CRMs (contract §14), on one threaded HTTP server.

Each answers its real path with the upsert semantics its documentation gives
(sources: docs/ and the CRM facts behind contract §14):

* Salesforce ``PATCH /services/data/vXX.X/sobjects/<object>/<field>/<value>``:
  no match creates (201, ``created: true``), one match updates (200 with
  ``created: false`` from API 46.0, 204 before), several matches answer 300
  with their urls (seed them with ``seed_salesforce``). Matching ignores case,
  as Salesforce's external ids do by default. The external id field repeated
  in the body is refused (400 ``INVALID_FIELD``). Quota: 403
  ``REQUEST_LIMIT_EXCEEDED``.
* HubSpot ``POST /crm/v3/objects/<object>/batch/upsert``: each input is
  matched on ``properties[idProperty] == id``; results carry ``new``. With
  ``hubspot_known_properties`` set, an unknown property fails that input
  (207 with ``errors``). Quota: 429 with ``policyName`` ``DAILY`` or
  ``TEN_SECONDLY_ROLLING``.
* Zoho ``POST /crm/v8/<module>/upsert``: ``duplicate_check_fields`` tried in
  order; per-record ``status`` ``success`` (``action`` insert/update) or
  ``error`` (``MANDATORY_NOT_FOUND`` for a missing required field, see
  ``zoho_required_fields``), in a 200. Header ``Authorization: Zoho-oauthtoken``.
* Dataverse ``PATCH /api/data/v9.2/<entity_set>(<key>='<value>')``: creates or
  updates, 204 either way with ``OData-EntityId``; ``If-Match: *`` only
  updates (404), ``If-None-Match: *`` only creates (412). Quota: 429 with
  ``Retry-After``.

Every route checks the token (``Bearer <token>``, Zoho's own scheme for Zoho).
Tests use the in-process API (``records``, ``requests``, the switches);
``GET /_standin/records`` and ``GET /_standin/requests`` serve the same as
JSON (request headers without ``Authorization``). Run it alone with
``python -m scripts.crm_standins --port 8111 --token <token>``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PRESET_NAMES = ("salesforce", "hubspot", "zoho", "dynamics")
DEFAULT_TOKEN = "standin-token"

_SALESFORCE = re.compile(r"^/services/data/v(\d+\.\d)/sobjects/([^/]+)/([^/]+)/([^/]+)$")
_HUBSPOT = re.compile(r"^/crm/v3/objects/([^/]+)/batch/upsert$")
_ZOHO = re.compile(r"^/crm/v8/([^/]+)/upsert$")
_DYNAMICS = re.compile(r"^/api/data/v9\.2/([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$")
_ODATA_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)='((?:[^']|'')*)'$")


@dataclass
class StandinRequest:
    preset: str | None
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def shown(self) -> dict[str, Any]:
        """For the JSON endpoint: no credentials."""
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        return {"preset": self.preset, "method": self.method, "path": self.path, "headers": headers}


@dataclass
class Answer:
    status: int
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CrmStandins:
    """``with CrmStandins(token="t") as crm: ... crm.url ... crm.records("salesforce")``"""

    def __init__(self, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token
        self.requests: list[StandinRequest] = []
        # Switches a test flips to make a CRM answer with its quota signal.
        self.salesforce_limit_exceeded = False
        self.hubspot_rate_limit_policy: str | None = None  # "DAILY" or "TEN_SECONDLY_ROLLING"
        self.dynamics_retry_after: int | None = None
        self.zoho_required_fields: dict[str, tuple[str, ...]] = {"Leads": ("Last_Name",)}
        self.hubspot_known_properties: dict[str, set[str]] | None = None
        self._records: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in PRESET_NAMES}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        standins = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = standins.handle(self.command, self.path, dict(self.headers.items()), body)
                payload = answer.encoded()
                self.send_response(answer.status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        # A short poll: shutdown() waits for the loop to notice, 0.5 s per test by default.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> CrmStandins:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve(self) -> None:
        """Serve in this thread until interrupted (the command line)."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def __enter__(self) -> CrmStandins:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the in-process API -------------------------------------------------------------

    def records(self, preset: str) -> dict[str, list[dict[str, Any]]]:
        """A copy of one preset's records, by object / module / entity set."""
        with self._lock:
            return copy.deepcopy(self._records[preset])

    def seed_salesforce(self, sobject: str, *records: dict[str, Any]) -> list[str]:
        """Put records in place (e.g. two with the same external id, for a 300); their ids."""
        with self._lock:
            ids = []
            for record in records:
                stored = {**record, "Id": self._salesforce_id()}
                self._records["salesforce"].setdefault(sobject, []).append(stored)
                ids.append(stored["Id"])
            return ids

    def requests_for(self, preset: str) -> list[StandinRequest]:
        with self._lock:
            return [r for r in self.requests if r.preset == preset]

    # --- dispatch ---------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = urlsplit(target).path
        routes: list[tuple[str, str, re.Pattern[str], Callable[[re.Match[str], dict[str, str], bytes], Answer]]] = [
            ("salesforce", "PATCH", _SALESFORCE, self._salesforce),
            ("hubspot", "POST", _HUBSPOT, self._hubspot),
            ("zoho", "POST", _ZOHO, self._zoho),
            ("dynamics", "PATCH", _DYNAMICS, self._dynamics),
        ]
        for preset, wanted, pattern, route in routes:
            match = pattern.match(path)
            if match is None:
                continue
            with self._lock:
                self.requests.append(StandinRequest(preset, method, path, headers, body))
            if method != wanted:
                return Answer(405, {"error": f"{preset} takes {wanted} here"})
            with self._lock:
                return route(match, headers, body)
        if method == "GET" and path in ("/_standin/records", "/_standin/requests"):
            with self._lock:
                if path.endswith("records"):
                    return Answer(200, copy.deepcopy(self._records))
                return Answer(200, [r.shown() for r in self.requests])
        return Answer(404, {"error": "no stand-in route here"})

    def _authorised(self, headers: dict[str, str], scheme: str) -> bool:
        given = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        return given == f"{scheme} {self.token}"

    def _salesforce_id(self) -> str:
        return f"00Q{next(self._ids):015d}"

    # --- Salesforce ---------------------------------------------------------------------------

    def _salesforce(self, match: re.Match[str], headers: dict[str, str], body: bytes) -> Answer:
        version, sobject, id_field, value = match.group(1), *map(unquote, match.group(2, 3, 4))
        if not self._authorised(headers, "Bearer"):
            return Answer(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        if self.salesforce_limit_exceeded:
            return Answer(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        fields = _json_object(body)
        if fields is None:
            return Answer(400, [{"message": "The request body is not a JSON object", "errorCode": "JSON_PARSER_ERROR"}])
        if id_field in fields:
            return Answer(
                400,
                [{"message": f"{id_field} is given in the url; remove it from the body", "errorCode": "INVALID_FIELD"}],
            )
        table = self._records["salesforce"].setdefault(sobject, [])
        matches = [r for r in table if str(r.get(id_field, "")).lower() == value.lower()]
        modern = float(version) >= 46.0
        if len(matches) > 1:
            return Answer(300, [f"/services/data/v{version}/sobjects/{sobject}/{r['Id']}" for r in matches])
        if not matches:
            record = {**fields, id_field: value, "Id": self._salesforce_id()}
            table.append(record)
            created = {"id": record["Id"], "success": True, "errors": []}
            return Answer(201, {**created, "created": True} if modern else created)
        matches[0].update(fields)
        if modern:
            return Answer(200, {"id": matches[0]["Id"], "success": True, "errors": [], "created": False})
        return Answer(204)

    # --- HubSpot ------------------------------------------------------------------------------

    def _hubspot(self, match: re.Match[str], headers: dict[str, str], body: bytes) -> Answer:
        object_type = unquote(match.group(1))
        if not self._authorised(headers, "Bearer"):
            return Answer(
                401,
                {
                    "status": "error",
                    "message": "Authentication credentials not found.",
                    "category": "INVALID_AUTHENTICATION",
                },
            )
        if self.hubspot_rate_limit_policy:
            return Answer(
                429,
                {
                    "status": "error",
                    "message": "You have reached your rate limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": self.hubspot_rate_limit_policy,
                },
            )
        document = _json_object(body)
        inputs = document.get("inputs") if document else None
        if not isinstance(inputs, list) or not inputs:
            return Answer(400, {"status": "error", "category": "VALIDATION_ERROR", "message": "inputs is required"})
        table = self._records["hubspot"].setdefault(object_type, [])
        started = _now()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        known = (self.hubspot_known_properties or {}).get(object_type)
        for item in inputs:
            id_property, record_id, properties = item.get("idProperty"), item.get("id"), item.get("properties")
            if not isinstance(id_property, str) or not isinstance(record_id, str) or not isinstance(properties, dict):
                errors.append(
                    {"status": "error", "category": "VALIDATION_ERROR", "message": "idProperty, id, properties"}
                )
                continue
            unknown = sorted(set(properties) - known) if known is not None else []
            if unknown:
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f'Property "{unknown[0]}" does not exist',
                        "context": {"propertyName": unknown},
                    }
                )
                continue
            existing = next((r for r in table if r["properties"].get(id_property) == record_id), None)
            now = _now()
            if existing is None:
                existing = {"id": str(next(self._ids)), "properties": {}, "createdAt": now}
                table.append(existing)
                new = True
            else:
                new = False
            existing["properties"].update({**properties, id_property: record_id})
            existing["updatedAt"] = now
            results.append({**copy.deepcopy(existing), "archived": False, "new": new})
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": _now()}
        if errors:
            answer.update(numErrors=len(errors), errors=errors)
            return Answer(207, answer)
        return Answer(200, answer)

    # --- Zoho ---------------------------------------------------------------------------------

    def _zoho(self, match: re.Match[str], headers: dict[str, str], body: bytes) -> Answer:
        module = unquote(match.group(1))
        if not self._authorised(headers, "Zoho-oauthtoken"):
            return Answer(
                401, {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}
            )
        document = _json_object(body)
        data = document.get("data") if document else None
        if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
            return Answer(400, {"code": "INVALID_DATA", "details": {}, "message": "invalid data", "status": "error"})
        check_fields = document.get("duplicate_check_fields") if document else None
        fields_in_order = [f for f in check_fields if isinstance(f, str)] if isinstance(check_fields, list) else []
        table = self._records["zoho"].setdefault(module, [])
        answers: list[dict[str, Any]] = []
        for record in data:
            missing = [f for f in self.zoho_required_fields.get(module, ()) if record.get(f) in (None, "")]
            if missing:
                answers.append(
                    {
                        "code": "MANDATORY_NOT_FOUND",
                        "details": {"api_name": missing[0]},
                        "message": "required field not found",
                        "status": "error",
                    }
                )
                continue
            existing, duplicate_field = None, None
            for check in fields_in_order:
                if record.get(check) not in (None, ""):
                    existing = next((r for r in table if r.get(check) == record[check]), None)
                    if existing is not None:
                        duplicate_field = check
                        break
            now = _now()
            if existing is None:
                existing = {**record, "id": str(5_000_000_000 + next(self._ids)), "Created_Time": now}
                table.append(existing)
                action, message = "insert", "record added"
            else:
                existing.update(record)
                action, message = "update", "record updated"
            existing["Modified_Time"] = now
            answers.append(
                {
                    "code": "SUCCESS",
                    "duplicate_field": duplicate_field,
                    "action": action,
                    "details": {"Modified_Time": now, "id": existing["id"]},
                    "message": message,
                    "status": "success",
                }
            )
        return Answer(200, {"data": answers})

    # --- Dataverse ----------------------------------------------------------------------------

    def _dynamics(self, match: re.Match[str], headers: dict[str, str], body: bytes) -> Answer:
        entity_set = match.group(1)
        if not self._authorised(headers, "Bearer"):
            return Answer(401, None, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.dynamics_retry_after is not None:
            return Answer(
                429,
                {
                    "error": {
                        "code": "0x80072322",
                        "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                    }
                },
                {"Retry-After": str(self.dynamics_retry_after)},
            )
        key = _ODATA_KEY.match(unquote(match.group(2)))
        if key is None:
            return Answer(400, {"error": {"code": "0x80060888", "message": "Bad Request - Error in query syntax."}})
        attribute, value = key.group(1), key.group(2).replace("''", "'")
        fields = _json_object(body)
        if fields is None:
            return Answer(400, {"error": {"code": "0x80048d19", "message": "Error identified in Payload."}})
        lowered = {k.lower(): v for k, v in headers.items()}
        table = self._records["dynamics"].setdefault(entity_set, [])
        existing = next((r for r in table if r.get(attribute) == value), None)
        if existing is None and lowered.get("if-match") == "*":
            return Answer(404, {"error": {"code": "0x80040217", "message": "Record does not exist."}})
        if existing is not None and lowered.get("if-none-match") == "*":
            return Answer(412, {"error": {"code": "0x80040237", "message": "A record with matching key exists."}})
        if existing is None:
            existing = {attribute: value, "_id": str(uuid.uuid4())}
            table.append(existing)
        existing.update(fields)
        entity_id = f"{self.url}/api/data/v9.2/{entity_set}({existing['_id']})"
        return Answer(204, None, {"OData-EntityId": entity_id, "OData-Version": "4.0"})


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8111)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    args = parser.parse_args()
    standins = CrmStandins(args.token, args.host, args.port)
    print(f"CRM stand-ins at {standins.url} (records: {standins.url}/_standin/records)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        standins.serve()


if __name__ == "__main__":
    main()
