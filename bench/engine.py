"""Mapping engine: variables + key_mapper render for one realistic call, against Jinja2.

Figures are microseconds per call (best of several timeit repeats):

* ``variables_us``     - ``build_push_variables`` for a call with a 200-turn
  transcript, 40 CRM fields, 20 SIP headers, analysis and qc maps (numbers as
  ``Decimal``, as DynamoDB hands them over);
* ``render_us``        - rendering the compiled 30-key mapper (placeholders
  resolved, JSON-like strings coerced back to objects, literals kept);
* ``jinja2_render_us`` - the same 30 templates as precompiled Jinja2 templates,
  rendered against the same values (nested dicts per namespace, each
  placeholder written as the variable it resolves to, the engine's number and
  JSON formatting as Jinja's ``finalize``) and coerced the same way, so both
  produce the identical payload (checked before timing);
* ``render_speedup``   - ``jinja2_render_us / render_us``;
* ``engine_us``        - ``variables_us + render_us``, the engine's cost per push.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jinja2

from crm_push.jsonvalues import to_text
from crm_push.templates import (
    CompiledKeyMapper,
    CompiledTemplate,
    coerce_json_like,
    compile_key_mapper,
    compile_template,
    explain_placeholder,
)
from crm_push.variables import build_push_variables

TIMEZONE = "Asia/Kolkata"
REPEATS = 7
TARGET_SECONDS_PER_REPEAT = 0.2

GOAL_SPEEDUP = 15.0
GOAL_ENGINE_US = 1000.0

_BOT_LINES = (
    "Namaste, am I speaking with Asha Verma?",
    "Your EMI of 1499 rupees for loan account HL-0042-7781 is due on the 28th.",
    "Will you be able to pay the full amount by then, or would you like a reminder closer to the date?",
    "Thank you. I have noted that you will pay on the 27th through the mobile app.",
)
_CUSTOMER_LINES = (
    "Yes, speaking.",
    "Haan, I know. Salary comes on the 26th, so I will pay on the 27th.",
    "Can you send me the payment link on WhatsApp also?",
    "Okay, thank you. Bye.",
)


def make_call() -> dict[str, Any]:
    """A call item as boto3 reads it from DynamoDB: every number a ``Decimal``."""
    transcript: list[dict[str, Any]] = []
    for turn in range(200):
        role = "bot" if turn % 2 == 0 else "customer"
        lines = _BOT_LINES if role == "bot" else _CUSTOMER_LINES
        entry: dict[str, Any] = {
            "role": role,
            "text": f"{lines[turn // 2 % len(lines)]} ({turn})",
            "t": Decimal(f"{1.2 + turn * 3.7:.1f}"),
        }
        if role == "customer":
            entry["confidence"] = Decimal("0.93") if turn % 3 else Decimal("0.875")
            entry["lang"] = "hi-IN"
        else:
            entry["interrupted"] = turn % 10 == 0
        transcript.append(entry)

    crm: dict[str, Any] = {
        "CUSTOMERNAME": "Asha Verma",
        "LOAN_ACCOUNT": "HL-0042-7781",
        "EMI_AMOUNT": Decimal("1499"),
        "INTEREST_RATE": Decimal("8.50"),
        "OUTSTANDING": Decimal("184523.75"),
        "TENURE_MONTHS": Decimal("240"),
        "ADDRESS": {"line1": "Flat 12, Sunrise Apartments", "city": "Pune", "pin": "411001"},
        "PRODUCTS": ["home_loan", "credit_card"],
        "LAST_PAYMENTS": [
            {"date": "2026-10-27", "amount": Decimal("1499")},
            {"date": "2026-09-28", "amount": Decimal("1499.00")},
        ],
        "KYC_DONE": True,
    }
    for index in range(len(crm), 40):
        crm[f"FIELD_{index:02d}"] = Decimal(index * 11) if index % 3 == 0 else f"value {index}"

    sip_headers: dict[str, Any] = {f"X-Custom-{index:02d}": f"custom-{index}" for index in range(10)}
    sip_headers.update(
        {
            "X-Lead-Id": "LD-558201",
            "x-agent-queue": "collections-hi",
            "From": "<sip:+918045671234@sip.example.net>;tag=as58f4201b",
            "To": "<sip:+919812345678@carrier.example.net>",
            "Call-ID": "a84b4c76e66710@pc33.example.net",
            "CSeq": "314159 INVITE",
            "Contact": "<sip:+918045671234@10.0.0.12:5060>",
            "User-Agent": "voicebot-gw/4.2",
            "Max-Forwards": "70",
            "Content-Type": "application/sdp",
        }
    )
    assert len(sip_headers) == 20

    return {
        "call_id": "call-7f3a9c2e-5b1d-4e8a-9c6f-2d4b8a1e0f37",
        "bot_id": "bot-loan-reminder-01",
        "results_stored_at": "2026-11-25T09:32:41.512Z",
        "transport": "sip",
        "connected_event": {
            "from_number": "+919812345678",
            "to_number": "+918045671234",
            "campaign_id": "CMP-2026-11-EMI",
            "direction": "outbound",
            "attempt": Decimal("2"),
            "carrier": "carrier.example.net",
        },
        "sip_headers": sip_headers,
        "crm_data": crm,
        "start_time": "2026-11-25T09:30:02Z",
        "answer_time": "2026-11-25T09:30:09Z",
        "end_time": "2026-11-25T09:42:38Z",
        "disconnected_by": "customer",
        "transcript": transcript,
        "transfer_status": "not_transferred",
        "transfer_target": "",
        "transfer_attempts": Decimal("0"),
        "analysis": {
            "DISPOSITION": "PROMISE_TO_PAY",
            "PTP_DATE": "2026-11-27",
            "PTP_AMOUNT": Decimal("1499"),
            "SUMMARY": "Customer confirmed identity and promised to pay the EMI on 27 Nov.",
            "SENTIMENT": "positive",
            "LANGUAGE": "hi-IN",
        },
        "qc": {
            "empathy_score": Decimal("8"),
            "compliance_score": Decimal("9.5"),
            "overall_score": Decimal("9"),
            "remarks": "Polite, compliant.",
            "flags": ["none"],
        },
        "recording_key": "recordings/2026/11/25/call-7f3a9c2e.wav",
        "recording_access_token": "rec_4QWJ9n2LxT0aZk7s",
        "events": [{"type": "connected", "t": Decimal("7")}, {"type": "disconnected", "t": Decimal("756")}],
        "integration_log": [],
    }


PAYLOAD: dict[str, Any] = {
    "recording_url": "https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s",
    "analysis_keys": ["DISPOSITION", "PTP_DATE", "PTP_AMOUNT", "SUMMARY", "CALLBACK_TIME", "SENTIMENT", "LANGUAGE"],
}

# 30 external keys: exact look-ups, suffix fallbacks, mixed text, object-valued placeholders, literals.
KEY_MAPPER: dict[str, Any] = {
    "lead_id": "{{call.X-Lead-Id}}",  # exact, X- SIP header
    "queue": "{{ call.x-agent-queue }}",  # exact, spaces inside the braces
    "customer_name": "{{CUSTOMERNAME}}",  # suffix fallback -> crm.
    "campaign": "{{crm.campaign_id}}",  # suffix fallback crm. -> call.
    "call_ref": "{{call_id}}",  # suffix fallback -> system.
    "loan_account": "{{crm.LOAN_ACCOUNT}}",
    "emi_amount": "{{crm.EMI_AMOUNT}}",  # Decimal('1499') -> "1499"
    "interest_rate": "{{crm.INTEREST_RATE}}",  # Decimal('8.50') -> "8.5"
    "outstanding": "{{crm.OUTSTANDING}}",
    "address": "{{crm.ADDRESS}}",  # object-valued: a map
    "products": "{{crm.PRODUCTS}}",  # object-valued: a list
    "last_payments": "{{crm.LAST_PAYMENTS}}",  # object-valued: list of maps with Decimals
    "call_id": "{{result.call_id}}",
    "call_status": "{{result.disposition}}",
    "disconnected_by": "{{system.disconnected_by}}",
    "outcome": "{{analysis.DISPOSITION}}",
    "promise_date": "{{analysis.PTP_DATE}}",
    "promise_amount": "{{analysis.PTP_AMOUNT}}",
    "callback_time": "{{analysis.CALLBACK_TIME}}",  # pre-seeded ""
    "summary": "{{analysis.SUMMARY}}",
    "qc_score": "{{qc.overall_score}}",
    "qc_remarks": "{{qc.remarks}}",
    "duration_sec": "{{result.call_duration_seconds}}",
    "started_at": "{{result.call_start_time}}",
    "answered_at": "{{result.call_answer_time}}",
    "recording": "{{result.recording_url}}",
    "note": "{{CUSTOMERNAME}} ({{crm.LOAN_ACCOUNT}}) promised {{analysis.PTP_AMOUNT}} on {{analysis.PTP_DATE}}",
    "customer": {"name": "{{CUSTOMERNAME}}", "phone": "{{call.from_number}}", "city": "Pune"},
    "source": "voicebot",
    "attempt": Decimal("1"),
}
assert len(KEY_MAPPER) == 30


# --- the Jinja2 side --------------------------------------------------------------


def jinja_context(variables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The same values, addressable from Jinja: one dict per namespace."""
    context: dict[str, dict[str, Any]] = {}
    for name, value in variables.items():
        namespace, _, field = name.partition(".")
        context.setdefault(namespace, {})[field] = value
    return context


def jinja_source(template: CompiledTemplate, variables: dict[str, Any]) -> str:
    """``template`` in Jinja2 syntax: each placeholder becomes the variable it resolves to."""
    pieces: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            pieces.append("{% raw %}" + part + "{% endraw %}" if "{" in part else part)
            continue
        _, name = explain_placeholder(part, variables)
        namespace, _, field = (name or part.key).partition(".")
        pieces.append(f"{{{{ {namespace}[{field!r}] }}}}")
    return "".join(pieces)


def compile_jinja(node: Any, variables: dict[str, Any], env: jinja2.Environment) -> Any:
    if isinstance(node, str):
        return env.from_string(jinja_source(compile_template(node), variables))
    if isinstance(node, dict):
        return {key: compile_jinja(value, variables, env) for key, value in node.items()}
    return node


def render_jinja(node: Any, context: dict[str, dict[str, Any]]) -> Any:
    if isinstance(node, jinja2.Template):
        return coerce_json_like(node.render(context))
    if isinstance(node, dict):
        return {key: render_jinja(value, context) for key, value in node.items()}
    return node


# --- timing -----------------------------------------------------------------------


def per_call_us(func: Callable[[], Any]) -> float:
    """Best of REPEATS timeit runs, each long enough (~TARGET_SECONDS_PER_REPEAT) to be stable."""
    timer = timeit.Timer(func)
    number, elapsed = timer.autorange()
    number = max(1, int(number * TARGET_SECONDS_PER_REPEAT / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=REPEATS, number=number)) / number * 1e6


def run() -> dict[str, float]:
    call = make_call()
    variables = build_push_variables(call, PAYLOAD, TIMEZONE)
    mapper: CompiledKeyMapper = compile_key_mapper(KEY_MAPPER)

    env = jinja2.Environment(autoescape=False, finalize=to_text)  # JSON, not HTML: no escaping
    jinja_mapper = {key: compile_jinja(value, variables, env) for key, value in KEY_MAPPER.items()}
    context = jinja_context(variables)

    engine_payload = mapper.render(variables, drop_unresolved=True)
    jinja_payload = render_jinja(jinja_mapper, context)
    if engine_payload != jinja_payload:
        raise AssertionError("the engine and Jinja2 rendered different payloads; the comparison would be unfair")

    variables_us = per_call_us(lambda: build_push_variables(call, PAYLOAD, TIMEZONE))
    render_us = per_call_us(lambda: mapper.render(variables, drop_unresolved=True))
    jinja2_render_us = per_call_us(lambda: render_jinja(jinja_mapper, context))
    figures = {
        "variables_us": round(variables_us, 2),
        "render_us": round(render_us, 2),
        "jinja2_render_us": round(jinja2_render_us, 2),
        "render_speedup": round(jinja2_render_us / render_us, 2),
        "engine_us": round(variables_us + render_us, 2),
    }
    _print_table(figures)
    return figures


def _print_table(figures: dict[str, float]) -> None:
    print(f"{'µs per call':<40}{'engine':>12}{'Jinja2':>12}{'Jinja2/engine':>16}")
    print(f"{'build_push_variables':<40}{figures['variables_us']:>12.1f}{'':>12}{'':>16}")
    print(
        f"{'render 30-key mapper':<40}{figures['render_us']:>12.1f}"
        f"{figures['jinja2_render_us']:>12.1f}{figures['render_speedup']:>15.1f}x"
    )
    print(f"{'variables + render':<40}{figures['engine_us']:>12.1f}")
    speedup_ok = figures["render_speedup"] >= GOAL_SPEEDUP
    engine_ok = figures["engine_us"] < GOAL_ENGINE_US
    print(f"goal render_speedup >= {GOAL_SPEEDUP:g}: {'met' if speedup_ok else 'MISSED'}")
    print(f"goal engine_us < {GOAL_ENGINE_US:g}: {'met' if engine_ok else 'MISSED'}")


if __name__ == "__main__":
    run()
