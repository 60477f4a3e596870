"""Property-based fuzz of the real handler: arbitrary stream records, EventBridge events and bot configs.

Properties, for any batch mixing bad records with good ones:

* nothing escapes the handler: it always answers a partial batch response;
* a record that cannot be read is logged with its sequence number (when it
  has one), skipped, and not reported for retry: retrying cannot fix it;
* a record that is not "results just stored" (REMOVE, our own MODIFY
  write-back, a change before results) is ignored: nothing sent, nothing written;
* a call whose bot config is invalid is recorded ``failed`` with the reason
  (a config without url: ``skipped``), nothing sent, not reported;
* every good record is pushed exactly once and recorded ``ok``.

Hypothesis fails its health check for function-scoped fixtures, so the AWS
tables, the CRM and the handler module are module-scoped here and every
example works on its own call and bot ids.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from scripts.local_crm import LocalCrm
from scripts.local_stack import create_resources
from scripts.make_events import results_stored_event, stream_record
from tests.conftest import REGION, LambdaContextStub, Stack

ROOT = Path(__file__).resolve().parents[2]
# Each example costs a few hundred ms of moto work, and Hypothesis's shrinker can then spend
# many minutes on a failure: it is off. The failing example is printed as generated.
SETTINGS = settings(
    max_examples=25, deadline=None, print_blob=True, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)


# --- the module's stack --------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Fuzz(Stack):
    """The module's stack (tables, CRM; no bucket) plus the handler module and its captured logs."""

    def __init__(
        self, dynamodb: Any, calls: str, bots: str, state: str, crm: LocalCrm, app: ModuleType, logs: _Capture
    ) -> None:
        super().__init__(dynamodb, None, crm, calls, bots, "", state_table=state)
        self.app, self.logs = app, logs
        self.sequence: Iterator[int] = iter(range(1, 10**9))

    def next_sequence(self) -> str:
        return str(next(self.sequence)).rjust(21, "0")

    def delivery(self, call_id: str) -> tuple[str | None, bool]:
        """The call's delivery state: its status, and whether a claim is still held."""
        item = self.dynamodb.get_item(
            TableName=self.state_table, Key={"pk": {"S": f"delivery#{call_id}"}}, ConsistentRead=True
        ).get("Item", {})
        return item.get("st", {}).get("S"), "claim_id" in item

    def pushes(self) -> Counter[str]:
        return Counter(r.headers.get("Idempotency-Key", "") for r in self.crm.requests)

    def invoke(self, event: Any) -> Any:
        self.logs.records.clear()
        return self.app.lambda_handler(event, LambdaContextStub())


@pytest.fixture(scope="module")
def fuzz(dynamodb_local_endpoint: str, moto_endpoint: str) -> Iterator[Fuzz]:
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_local_endpoint)
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)
    resources = create_resources(dynamodb, s3, sqs, f"fuzz-{uuid.uuid4().hex[:8]}")
    capture = _Capture()
    loggers = [logging.getLogger(name) for name in ("post-call-push", "crm_push")]
    with pytest.MonkeyPatch.context() as env, LocalCrm() as crm:
        env.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        env.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local_endpoint)
        for name, value in resources.env().items():
            env.setenv(name, value)
        env.setenv("PUBLIC_BASE_URL", "https://api.example.com")
        env.setenv("PUSH_ALLOW_PRIVATE_NETWORKS", "true")
        sys.modules.pop("app", None)
        app = importlib.import_module("app")
        app._runtime()  # wire it to this module's tables now, while the environment says so
        for logger in loggers:
            logger.addHandler(capture)
        try:
            yield Fuzz(dynamodb, resources.calls_table, resources.bots_table, resources.state_table, crm, app, capture)
        finally:
            for logger in loggers:
                logger.removeHandler(capture)
            if app._executor is not None:
                app._executor.shutdown(wait=True)
            sys.modules.pop("app", None)


# --- what goes in ----------------------------------------------------------------------------

RESULTS_AT = "2026-11-25T09:32:41.512Z"


def _call(call_id: str, bot_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "bot_id": bot_id,
        "results_stored_at": RESULTS_AT,
        "transport": "sip",
        "start_time": "2026-11-25T09:30:02Z",
        "end_time": "2026-11-25T09:32:38Z",
        "disconnected_by": "customer",
        "crm_data": {"CUSTOMERNAME": "Asha Verma", "EMI_AMOUNT": 1499},
        "events": [{"type": "connected", "t": 7}],
        **extra,
    }


def _plain(call: dict[str, Any]) -> dict[str, Any]:
    """As DynamoDB hands an item over: numbers as Decimal."""
    item: dict[str, Any] = json.loads(json.dumps(call), parse_float=Decimal, parse_int=Decimal)
    return item


def _bot(bot_id: str, push: Any) -> dict[str, Any]:
    return {"bot_id": bot_id, "timezone": "Asia/Kolkata", "analysis_keys": ["DISPOSITION"], "post_call_push": push}


# Templates and JSON values a key_mapper may hold: placeholders known and unknown, stray braces.
_placeholder = st.sampled_from(
    [
        *("{{crm.CUSTOMERNAME}}", "{{ result.call_id }}", "{{CUSTOMERNAME}}", "{{crm.EMI_AMOUNT}}", "{{analysis.X}}"),
        *("{{qc.overall_score}}", "{{result.transcript}}", "{{nope.nothing}}", "{{", "}}", "{{}}", "{ {x} }"),
    ]
)
_template = st.lists(st.one_of(st.text(max_size=6), _placeholder), max_size=4).map("".join)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    _template,
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
good_push_configs = st.fixed_dictionaries(
    {"key_mapper": st.dictionaries(st.text(min_size=1, max_size=10), _json_value, min_size=1, max_size=5)},
    optional={"method": st.sampled_from(["POST", "GET", "post", "get"]), "token": st.just("Bearer t-123")},
)

# Configs no push can be made from: each must be recorded as failed, with the reason. Each has
# a working url (CRM_URL, filled in per example) wherever it can, so a config wrongly accepted
# would reach the CRM and be caught.
CRM_URL = "@crm"
_not_a_map = st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2), st.booleans())
bad_push_configs = st.one_of(
    _not_a_map.map(lambda v: ("post_call_push", v)),
    _not_a_map.map(lambda v: ("key_mapper", {"url": CRM_URL, "key_mapper": v})),
    st.sampled_from(["DELETE", "HEAD", "FETCH", "P OST", 5, True, ["POST"], {"m": 1}]).map(
        lambda v: ("method", {"url": CRM_URL, "method": v, "key_mapper": {"a": "{{result.call_id}}"}})
    ),
    st.sampled_from(
        [
            *("ftp://crm.example.com/x", "not a url", "http://", "https://exa mple.com/x", "javascript:alert(1)"),
            *("http://[::1/x", "http://crm.example.com:99999/x", "//crm.example.com/x", 5, ["http://x"], {"u": 1}),
        ]
    ).map(lambda v: ("url", {"url": v, "key_mapper": {"a": "1"}})),
    st.sampled_from(
        [
            {"headers": {"X-A": "a\r\nX-Injected: 1"}},
            {"headers": {"X-A": "a\nb"}},
            {"headers": {"X-A": "a\rb"}},
            {"headers": {"Bad Name": "v"}},
            {"headers": {"X-A\r\nX-B": "v"}},
            {"headers": {"X-A": 5}},
            {"headers": "X-A: 1"},
            {"headers": ["X-A"]},
            {"token": "Bearer x\r\nX-Evil: 1"},
            {"token": 5},
            # a templated header whose value brings CR/LF in from the call itself
            {"headers": {"X-Name": "{{crm.EVIL}}"}},
        ]
    ).map(lambda v: ("headers", {**v, "url": CRM_URL, "key_mapper": {"a": "1"}})),
    st.integers(11, 14).map(lambda depth: ("too_deep", {"url": CRM_URL, "key_mapper": _nested(depth)})),
)


def _with_url(push: Any, url: str) -> Any:
    return {**push, "url": url} if isinstance(push, dict) and push.get("url") == CRM_URL else push


def _nested(depth: int) -> dict[str, Any]:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return {"deep": value}


no_url_configs = st.sampled_from([{}, {"url": ""}, {"url": "   "}, {"url": None}]).map(
    lambda v: {**v, "key_mapper": {"a": "1"}}
)

# Attribute values that are not valid DynamoDB JSON at all: the image cannot be read.
_undecodable = st.one_of(
    st.sampled_from([{"N": "abc"}, {"X": "y"}, {"M": "str"}, {"M": []}, {"L": {"a": 1}}, {"L": "x"}, {}]),
    st.sampled_from([{"NS": ["a"]}, {"M": {"a": "b"}}, {"L": [1]}]),
    st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
)
# call_id descriptors that decode, but never to a non-empty string.
_not_a_call_id = st.sampled_from(
    [{"S": ""}, {"S": 5}, {"N": "5"}, {"NULL": True}, {"BOOL": True}, {"SS": ["a"]}, {"M": {}}, {"L": []}, {"B": 5}]
)
_not_a_mapping = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2))
# Powertools reads an empty or zero image ("", 0, []) as no image at all: the record is then
# simply not eligible. Unreadable images are the truthy ones.
_truthy_not_a_mapping = st.one_of(
    st.text(min_size=1, max_size=5), st.integers().filter(bool), st.lists(st.integers(), min_size=1, max_size=2)
)


# Readable calls whose attributes have the wrong types (the contract's types are not enforced
# by DynamoDB): each must be pushed at most once and recorded, never left to retries.
_wrong_value = st.one_of(
    st.text(max_size=6),
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 9), max_size=2),
)
wrong_typed_calls = st.dictionaries(
    st.sampled_from(
        [
            *("transcript", "start_time", "end_time", "answer_time", "crm_data", "connected_event", "sip_headers"),
            *("analysis", "qc", "disconnected_by", "transport", "recording_url", "recording_key"),
            *("recording_access_token", "transfer_status", "events", "integration_log"),
        ]
    ),
    _wrong_value,
    min_size=1,
    max_size=3,
)


@dataclass
class BadRecord:
    kind: str
    detail: Any = None


unreadable_records = st.one_of(
    st.builds(BadRecord, st.just("not_a_record"), _not_a_mapping),
    st.builds(BadRecord, st.just("no_dynamodb")),
    st.builds(BadRecord, st.just("dynamodb_not_a_map"), _not_a_mapping),
    st.builds(BadRecord, st.just("new_image_not_a_map"), _truthy_not_a_mapping),
    st.builds(BadRecord, st.just("old_image_not_a_map"), _truthy_not_a_mapping),
    st.builds(
        BadRecord, st.just("undecodable_attribute"), st.tuples(st.sampled_from(["call_id", "crm_data"]), _undecodable)
    ),
    st.builds(BadRecord, st.just("no_call_id"), st.one_of(st.none(), _not_a_call_id)),
)
ignored_records = st.builds(BadRecord, st.sampled_from(["remove", "writeback", "before_results", "modify_other"]))


# --- the batch property -----------------------------------------------------------------------


def _unreadable(fuzz: Fuzz, bad: BadRecord, call_id: str) -> tuple[Any, str | None]:
    """A stream record the handler cannot read, and its sequence number (None when it has none)."""
    sequence = fuzz.next_sequence()
    record = stream_record(_plain(_call(call_id, "bot-x")), None, event_name="INSERT", sequence_number=sequence)
    section = record["dynamodb"]
    if bad.kind == "not_a_record":
        return bad.detail, None
    if bad.kind == "no_dynamodb":
        del record["dynamodb"]
        return record, None
    if bad.kind == "dynamodb_not_a_map":
        record["dynamodb"] = bad.detail
        return record, None
    if bad.kind == "new_image_not_a_map":
        section["NewImage"] = bad.detail
    elif bad.kind == "old_image_not_a_map":
        section["OldImage"] = bad.detail
        record["eventName"] = "MODIFY"
    elif bad.kind == "undecodable_attribute":
        name, value = bad.detail
        section["NewImage"][name] = value
    elif bad.kind == "no_call_id":
        if bad.detail is None:
            del section["NewImage"]["call_id"]
        else:
            section["NewImage"]["call_id"] = bad.detail
    return record, sequence


def _ignored(fuzz: Fuzz, bad: BadRecord, call: dict[str, Any]) -> dict[str, Any]:
    """A readable record that is not "results just stored", for a call that could be pushed."""
    stored = _plain(call)
    before = {k: v for k, v in stored.items() if k != "results_stored_at"}
    pushed = {**stored, "post_call_push_result": {"status": "ok", "http_status": Decimal(200)}}
    sequence = fuzz.next_sequence()
    new, old, name = {
        "remove": (None, stored, "REMOVE"),
        "writeback": (pushed, stored, "MODIFY"),
        "before_results": (before, None, "INSERT"),
        "modify_other": ({**stored, "qc": {"remarks": "late"}}, stored, "MODIFY"),
    }[bad.kind]
    return stream_record(new, old, event_name=name, sequence_number=sequence)


def _logged_with(fuzz: Fuzz, sequence: str) -> bool:
    return any(getattr(r, "sequence_number", None) == sequence for r in fuzz.logs.records)


def _malformed_logs(fuzz: Fuzz) -> list[logging.LogRecord]:
    return [r for r in fuzz.logs.records if r.getMessage() == "malformed stream record skipped"]


@SETTINGS
@example(  # one of each kind, always run
    good_configs=[{"key_mapper": {"name": "{{CUSTOMERNAME}}", "n": 1}}],
    good_count=2,
    unreadable=[
        BadRecord("new_image_not_a_map", "x"),
        BadRecord("undecodable_attribute", ("crm_data", {"N": "abc"})),
        BadRecord("no_call_id", {"S": ""}),
        BadRecord("no_dynamodb"),
    ],
    ignored=[BadRecord("writeback"), BadRecord("remove")],
    bad_configs=[("headers", {"url": CRM_URL, "headers": {"X-Name": "{{crm.EVIL}}"}, "key_mapper": {"a": "1"}})],
    no_url=[{"key_mapper": {"a": "1"}}],
    wrong_typed=[{"events": "not a list"}, {"transcript": "text", "start_time": 5}],
    order=random.Random(0),  # noqa: S311 - a shuffle, not a secret
)
@given(
    good_configs=st.lists(good_push_configs, min_size=1, max_size=2),
    good_count=st.integers(1, 3),
    unreadable=st.lists(unreadable_records, max_size=4),
    ignored=st.lists(ignored_records, max_size=2),
    bad_configs=st.lists(bad_push_configs, max_size=2),
    no_url=st.lists(no_url_configs, max_size=1),
    wrong_typed=st.lists(wrong_typed_calls, max_size=2),
    order=st.randoms(use_true_random=False),
)
def test_a_batch_of_good_and_bad_records_pushes_each_good_one_once_and_never_raises(
    fuzz: Fuzz,
    good_configs: list[dict[str, Any]],
    good_count: int,
    unreadable: list[BadRecord],
    ignored: list[BadRecord],
    bad_configs: list[tuple[str, Any]],
    no_url: list[dict[str, Any]],
    wrong_typed: list[dict[str, Any]],
    order: Any,
) -> None:
    uid = uuid.uuid4().hex[:10]
    records: list[Any] = []

    # good: each on a bot with a valid (random) config, INSERT or a MODIFY that stores results
    good_ids = []
    for b, config in enumerate(good_configs):
        bot_id = f"bot-{uid}-good{b}"
        fuzz.put_bot(_bot(bot_id, {**config, "url": f"{fuzz.crm.url}/in/{bot_id}"}))
        for i in range(good_count):
            call = _call(f"fz-{uid}-good{b}-{i}", bot_id)
            fuzz.put_call(call)
            good_ids.append(call["call_id"])
            stored = _plain(call)
            old = {k: v for k, v in stored.items() if k != "results_stored_at"} if i % 2 else None
            records.append(
                stream_record(
                    stored, old, event_name="MODIFY" if old else "INSERT", sequence_number=fuzz.next_sequence()
                )
            )
    good_bot = f"bot-{uid}-good0"

    # unreadable: never pushed, even when the call they name exists
    unreadable_sequences: list[str | None] = []
    for j, bad in enumerate(unreadable):
        call = _call(f"fz-{uid}-unreadable{j}", good_bot)
        fuzz.put_call(call)
        record, sequence = _unreadable(fuzz, bad, call["call_id"])
        records.append(record)
        unreadable_sequences.append(sequence)

    # ignored: readable, for calls that exist on a good bot, but not "results just stored"
    ignored_ids = []
    for j, bad in enumerate(ignored):
        call = _call(f"fz-{uid}-ignored{j}", good_bot)
        fuzz.put_call(call)
        ignored_ids.append(call["call_id"])
        records.append(_ignored(fuzz, bad, call))

    # invalid or url-less configs: recorded, never sent
    recorded_ids: dict[str, str] = {}
    configs = [push for _, push in bad_configs] + no_url
    for j, push in enumerate(configs):
        bot_id = f"bot-{uid}-bad{j}"
        fuzz.put_bot(_bot(bot_id, _with_url(push, f"{fuzz.crm.url}/in/{bot_id}")))
        call = _call(f"fz-{uid}-bad{j}", bot_id, crm_data={"EVIL": "x\r\nX-Injected: 1"})
        fuzz.put_call(call)
        recorded_ids[call["call_id"]] = "failed" if j < len(bad_configs) else "skipped"
        records.append(stream_record(_plain(call), None, event_name="INSERT", sequence_number=fuzz.next_sequence()))

    # wrong-typed attributes on a good bot: recorded once, whatever the outcome
    odd_ids: dict[str, dict[str, Any]] = {}
    for j, attributes in enumerate(wrong_typed):
        call = _call(f"fz-{uid}-odd{j}", good_bot, **attributes)
        fuzz.put_call(call)
        odd_ids[call["call_id"]] = attributes
        records.append(stream_record(_plain(call), None, event_name="INSERT", sequence_number=fuzz.next_sequence()))

    order.shuffle(records)
    before = fuzz.pushes()

    # When the batch is handled
    response = fuzz.invoke({"Records": records})

    # Then nothing escaped and nothing is reported: no record here is one a retry could fix
    assert response == {"batchItemFailures": []}
    sent = fuzz.pushes() - before

    # every good record was pushed exactly once and recorded ok
    assert Counter({k: n for k, n in sent.items() if k not in odd_ids}) == Counter(dict.fromkeys(good_ids, 1))
    for call_id in good_ids:
        stored = fuzz.get_call(call_id)
        assert stored["post_call_push_result"]["status"] == "ok", stored["post_call_push_result"]
        assert [e["type"] for e in stored["integration_log"]] == ["post_call_push"]

    # every unreadable record was logged, with its sequence number when it has one; none pushed
    malformed = _malformed_logs(fuzz)
    assert len(malformed) == len(unreadable)
    for sequence in unreadable_sequences:
        if sequence is not None:
            assert _logged_with(fuzz, sequence), f"record {sequence} was not logged with its sequence number"
    for j in range(len(unreadable)):
        assert "post_call_push_result" not in fuzz.get_call(f"fz-{uid}-unreadable{j}")

    # ignored records changed nothing
    for call_id in ignored_ids:
        assert "post_call_push_result" not in fuzz.get_call(call_id)

    # every invalid config is recorded on its call with the reason, and logged
    for call_id, status in recorded_ids.items():
        stored = fuzz.get_call(call_id)
        result = stored["post_call_push_result"]
        assert result["status"] == status, result
        assert result["error"], result
        assert [e["status"] for e in stored["integration_log"]] == [status]
        assert fuzz.delivery(call_id) == ("done", False)
        assert any(getattr(r, "call_id", None) == call_id for r in fuzz.logs.records)

    # a call with wrong-typed attributes is pushed at most once and its result recorded; the
    # entries are appended when integration_log and events are lists, else the result is
    # recorded alone and neither attribute is touched
    for call_id, attributes in odd_ids.items():
        stored = fuzz.get_call(call_id)
        result = stored["post_call_push_result"]
        assert result["status"] in ("ok", "failed"), result
        assert sent[call_id] == (1 if result["status"] == "ok" else 0)
        assert fuzz.delivery(call_id) == ("done", False)
        original = _plain(_call(call_id, good_bot, **attributes))
        if all(isinstance(original.get(name, []), list) for name in ("integration_log", "events")):
            for name in ("integration_log", "events"):
                *kept, added = stored[name]
                assert kept == original.get(name, []), name
                assert added["type"] == "post_call_push", name
        else:
            for name in ("integration_log", "events"):
                assert stored.get(name) == original.get(name)


# --- EventBridge ----------------------------------------------------------------------------

_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2))
_bad_details = st.one_of(
    _junk,
    st.fixed_dictionaries({}, optional={"bot_id": st.text(max_size=5)}),  # no call_id
    st.fixed_dictionaries(
        {"call_id": st.one_of(st.just(""), st.integers(), st.none(), st.lists(st.text(), max_size=1))}
    ),
    st.fixed_dictionaries({"call_id": st.just("x" * 513)}),
    st.fixed_dictionaries(
        {"call_id": st.just("c-1"), "bot_id": st.one_of(st.integers(), st.lists(st.text(), max_size=1))}
    ),
)


@dataclass
class BadEvent:
    field: str
    value: Any


_bad_events = st.one_of(
    st.builds(BadEvent, st.just("detail"), _bad_details),
    st.builds(
        BadEvent, st.just("detail-type"), st.one_of(_junk, st.sampled_from(["Call Started", "call results stored"]))
    ),
    st.builds(BadEvent, st.sampled_from(["version", "id", "source", "account", "time", "region", "resources"]), _junk),
    st.builds(
        BadEvent, st.sampled_from(["detail", "version", "id", "source", "account", "time", "region"]), st.just(...)
    ),
)


@SETTINGS
@given(bad=_bad_events)
def test_an_eventbridge_event_with_missing_or_wrong_fields_is_logged_and_never_raises(
    fuzz: Fuzz, bad: BadEvent
) -> None:
    uid = uuid.uuid4().hex[:10]
    bot_id = f"bot-{uid}"
    call = _call(f"fz-{uid}-eb", bot_id)
    fuzz.put_bot(_bot(bot_id, {"url": f"{fuzz.crm.url}/in", "key_mapper": {"id": "{{result.call_id}}"}}))
    fuzz.put_call(call)
    event: dict[str, Any] = results_stored_event(call["call_id"], bot_id, event_id=f"evt-{uid}")
    if bad.value is ...:
        del event[bad.field]
    else:
        event[bad.field] = bad.value
    before = fuzz.pushes()

    response = fuzz.invoke(event)

    # Then it answers, and either the event was usable and the call pushed once, or it is
    # logged as malformed and nothing happened
    assert isinstance(response, dict)
    sent = fuzz.pushes() - before
    if response.get("status") == "pushed":
        assert sent == Counter({call["call_id"]: 1})
        return
    assert response["status"] in ("invalid_event", "call_not_found"), response
    assert sent == Counter()
    assert "post_call_push_result" not in fuzz.get_call(call["call_id"])
    if response["status"] == "invalid_event":
        assert any(r.levelno >= logging.ERROR for r in fuzz.logs.records)


@SETTINGS
@given(event=st.one_of(_junk, st.dictionaries(st.text(max_size=8), _junk, max_size=4)))
def test_an_event_that_is_neither_trigger_is_logged_and_never_raises(fuzz: Fuzz, event: Any) -> None:
    response = fuzz.invoke(event)

    assert isinstance(response, dict)
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        assert response == {"batchItemFailures": []}
    else:
        assert response["status"] == "invalid_event"
        assert any(r.levelno >= logging.ERROR for r in fuzz.logs.records)
