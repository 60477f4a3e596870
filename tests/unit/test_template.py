"""template.yaml: the stream filter admits exactly "results just stored", and the wiring stays consistent.

Most checks read the template as CloudFormation would deploy it with given parameter
values (``Deployment`` evaluates its conditions); the deploy-mode checks expand it with
SAM's own translator first, exactly as ``make cfn`` does (scripts/sam_transform.py).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest
from cfnlint.decode.cfn_yaml import load

from crm_push.ports import ErrorKind

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = load(str(ROOT / "template.yaml"))
FUNCTION = TEMPLATE["Resources"]["PostCallPushFunction"]["Properties"]
GLOBALS = TEMPLATE["Globals"]["Function"]
ENV = {**GLOBALS["Environment"]["Variables"], **FUNCTION["Environment"]["Variables"]}
_ABSENT = object()
_NO_VALUE = object()

# The metric vocabulary the handler emits (contract section 10; namespace and dimension from ENV).
ERROR_KINDS = get_args(ErrorKind)
DELIVERY_METRICS = {"AttemptScheduled", "DeliveryExhausted", "CircuitOpened", "CallsHeldByOpenCircuit", "RateLimited"}

EXISTING_TABLES = {
    "ExistingCallsTableName": "calls",
    "ExistingBotsTableName": "bots",
    "ExistingCallsTableStreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/calls/stream/2026-01-01T00:00:00.000",
}
KMS_KEYS = {
    "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555",
    "SecretsKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/66666666-7777-8888-9999-000000000000",
}


class Deployment:
    """The template as CloudFormation resolves it for one set of parameter values.

    Evaluates Conditions, ``Fn::If``, ``Ref`` to parameters and ``AWS::NoValue``, and
    substitutes parameters into ``Fn::Sub`` strings; references to resources and
    pseudo parameters stay as they are.
    """

    def __init__(self, template: dict[str, Any], **overrides: str) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        assert set(overrides) <= set(declared), set(overrides) - set(declared)
        self.parameters = {name: str(p.get("Default", "")) for name, p in declared.items()} | overrides

    def condition(self, name: str) -> bool:
        return self._holds(self.template["Conditions"][name])

    def _holds(self, node: dict[str, Any]) -> bool:
        ((function, args),) = node.items()
        if function == "Fn::Equals":
            left, right = (self.resolve(arg) for arg in args)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self._holds(args[0])
        if function == "Fn::And":
            return all(self._holds(arg) for arg in args)
        if function == "Fn::Or":
            return any(self._holds(arg) for arg in args)
        if function == "Condition":
            return self.condition(args)
        raise AssertionError(f"condition function {function} not understood")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [value for value in (self.resolve(item) for item in node) if value is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Fn::If":
                name, if_true, if_false = value
                return self.resolve(if_true if self.condition(name) else if_false)
            if key == "Ref" and value == "AWS::NoValue":
                return _NO_VALUE
            if key == "Ref" and value in self.parameters:
                return self.parameters[value]
            if key == "Fn::Sub" and isinstance(value, str):
                return re.sub(r"\$\{(\w+)\}", lambda m: self.parameters.get(m[1], m[0]), value)
        return {key: value for key, value in ((k, self.resolve(v)) for k, v in node.items()) if value is not _NO_VALUE}

    @functools.cached_property
    def resources(self) -> dict[str, Any]:
        return {
            name: self.resolve(resource)
            for name, resource in self.template["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }

    def of_type(self, resource_type: str) -> dict[str, Any]:
        return {name: r for name, r in self.resources.items() if r["Type"] == resource_type}

    @property
    def outputs(self) -> dict[str, Any]:
        return {name: self.resolve(output["Value"]) for name, output in self.template.get("Outputs", {}).items()}


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """Lambda/EventBridge pattern matching, for equality and ``exists`` only.

    Every key must match (AND); a list of conditions matches if any does (OR). A path
    whose parent object is missing has no value, so ``{"exists": false}`` holds there.
    """
    for key, rule in pattern.items():
        value = event.get(key, _ABSENT) if isinstance(event, dict) else _ABSENT
        if isinstance(rule, dict):
            if not matches(rule, value if isinstance(value, dict) else {}):
                return False
        elif not any(_leaf_matches(condition, value) for condition in rule):
            return False
    return True


def _leaf_matches(condition: Any, value: Any) -> bool:
    if isinstance(condition, dict):
        assert set(condition) == {"exists"}, f"matcher does not know {condition}"
        # exists applies to leaves only: an object value does not count as present.
        return (value is not _ABSENT and not isinstance(value, dict)) is condition["exists"]
    return bool(value == condition)


def stream_record(name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())["Records"][0]
    return record


def results_added_by_modify() -> dict[str, Any]:
    """An existing call item on which results ingestion has just set results_stored_at."""
    record = copy.deepcopy(stream_record("stream_modify_writeback.json"))
    del record["dynamodb"]["OldImage"]["results_stored_at"]
    return record


def removal() -> dict[str, Any]:
    record = copy.deepcopy(stream_record("stream_modify_writeback.json"))
    record["eventName"] = "REMOVE"
    del record["dynamodb"]["NewImage"]
    return record


@pytest.mark.parametrize(
    ("record", "delivered"),
    [
        pytest.param(stream_record("stream_insert.json"), True, id="insert-with-results"),
        pytest.param(results_added_by_modify(), True, id="modify-storing-results"),
        pytest.param(stream_record("stream_modify_writeback.json"), False, id="push-write-back"),
        pytest.param(removal(), False, id="remove"),
    ],
)
def test_stream_filter_delivers_only_results_just_stored(record: dict[str, Any], delivered: bool) -> None:
    filters = FUNCTION["Events"]["CallsStream"]["Properties"]["FilterCriteria"]["Filters"]
    assert any(matches(json.loads(f["Pattern"]), record) for f in filters) is delivered


def _statements(node: Any) -> list[dict[str, Any]]:
    """Every IAM statement anywhere in the template, including both branches of an Fn::If."""
    if isinstance(node, list):
        return [s for item in node for s in _statements(item)]
    if not isinstance(node, dict):
        return []
    found = list(node["Statement"]) if isinstance(node.get("Statement"), list) else []
    return found + [s for key, value in node.items() if key != "Statement" for s in _statements(value)]


def _delegates_to_iam(statement: dict[str, Any]) -> bool:
    """A KMS key policy's root statement: the account (IAM policies) decides who may use the key, as AWS's default."""
    principal = statement.get("Principal")
    aws = principal.get("AWS") if isinstance(principal, dict) else None
    return isinstance(aws, dict) and str(aws.get("Fn::Sub", "")).endswith(":root")


def test_iam_grants_no_wildcard_actions() -> None:
    statements = [s for s in _statements(TEMPLATE["Resources"]) if not _delegates_to_iam(s)]
    assert len(statements) >= 5
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions, statement
        if statement["Effect"] == "Allow":
            assert not any("*" in action for action in actions), statement


def test_claim_lease_outlives_the_invocation() -> None:
    timeout = FUNCTION.get("Timeout", GLOBALS["Timeout"])
    assert int(ENV["CLAIM_LEASE_SECONDS"]) == 2 * timeout


def test_failure_rate_alarm_reads_the_metrics_the_handler_emits() -> None:
    alarm = TEMPLATE["Resources"]["PushFailureRateAlarm"]["Properties"]
    metrics = [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
    assert {m["MetricName"] for m in metrics} == {f"Push_{s}" for s in ("ok", "rejected", "skipped", "failed")}
    for metric in metrics:
        assert metric["Namespace"] == ENV["POWERTOOLS_METRICS_NAMESPACE"]
        assert metric["Dimensions"] == [{"Name": "service", "Value": ENV["POWERTOOLS_SERVICE_NAME"]}]


# ---------------------------------------------------------------- durable delivery


def _function_statements(deployment: Deployment) -> list[dict[str, Any]]:
    """The function's own inline statements as deployed (SAM's managed policies are not ours)."""
    function = deployment.resources["PostCallPushFunction"]["Properties"]
    return [s for policy in function["Policies"] for s in policy["Statement"]]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in statements}


def test_state_table_is_keyed_by_pk_and_expires_by_ttl() -> None:
    table = Deployment(TEMPLATE).resources["PushStateTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"][0] == {"AttributeName": "pk", "AttributeType": "S"}
    [waiting] = table["GlobalSecondaryIndexes"]
    assert waiting["IndexName"] == "waits_on-due-index"
    assert [k["AttributeName"] for k in waiting["KeySchema"]] == ["waits_on", "due"]
    # Retained: it is the at-most-once memory beside the call items.
    assert Deployment(TEMPLATE).resources["PushStateTable"]["DeletionPolicy"] == "Retain"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert ENV["PUSH_STATE_TABLE"] == {"Ref": "PushStateTable"}


def test_retry_queue_redrives_to_its_own_dead_letter_queue() -> None:
    resources = Deployment(TEMPLATE).resources
    queue = resources["RetryQueue"]["Properties"]
    dead_letters = resources["RetryDeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["RetryDeadLetterQueue", "Arn"]}
    # AWS's floor for Lambda event sources; far above it, a poison message would cycle for hours.
    assert 5 <= queue["RedrivePolicy"]["maxReceiveCount"] <= 20
    assert dead_letters["MessageRetentionPeriod"] == 14 * 24 * 3600
    # A message moved to the DLQ keeps its first enqueue time: the DLQ must keep messages longer.
    assert dead_letters["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    # Longer than the longest schedule a bot may set (contract section 10: 259,200 s in total).
    assert queue["MessageRetentionPeriod"] >= 259_200
    assert "RedrivePolicy" not in dead_letters
    assert ENV["RETRY_QUEUE_URL"] == {"Ref": "RetryQueue"}


def test_retry_queue_visibility_covers_six_function_timeouts() -> None:
    queue = Deployment(TEMPLATE).resources["RetryQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * FUNCTION.get("Timeout", GLOBALS["Timeout"])


@pytest.mark.parametrize("keys", [{}, KMS_KEYS], ids=["sqs-managed-keys", "customer-key"])
def test_every_queue_is_encrypted_and_refuses_plain_http(keys: dict[str, str]) -> None:
    deployment = Deployment(TEMPLATE, **keys)
    queues = deployment.of_type("AWS::SQS::Queue")
    assert set(queues) == {"OnFailureQueue", "RetryQueue", "RetryDeadLetterQueue"}
    for name, queue in queues.items():
        properties = queue["Properties"]
        if keys:
            assert properties["KmsMasterKeyId"] == keys["KmsKeyArn"], name
            assert "SqsManagedSseEnabled" not in properties, name  # the two are mutually exclusive
        else:
            assert properties["SqsManagedSseEnabled"] is True, name
            assert "KmsMasterKeyId" not in properties, name
    tls_only = {
        json.dumps(queue_ref, sort_keys=True)
        for policy in deployment.of_type("AWS::SQS::QueuePolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for queue_ref in _listed(statement["Resource"])
    }
    assert tls_only == {json.dumps({"Fn::GetAtt": [name, "Arn"]}, sort_keys=True) for name in queues}


def test_retry_queue_feeds_the_function_with_partial_batch_responses() -> None:
    events = Deployment(TEMPLATE).resources["PostCallPushFunction"]["Properties"]["Events"]
    sqs_events = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    assert len(sqs_events) == 1
    (source,) = sqs_events
    assert source["Queue"] == {"Fn::GetAtt": ["RetryQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Lambda's SQS poller takes at most 10 messages a batch unless it may wait to fill one.
    assert source["BatchSize"] <= 10 or source["MaximumBatchingWindowInSeconds"] >= 1
    assert source["ScalingConfig"]["MaximumConcurrency"] >= 2  # Lambda's minimum


def test_reserved_concurrency_always_leaves_room_for_the_stream() -> None:
    """Every value the parameter admits exceeds the retry queue's share, so retries cannot take it all."""
    parameter = TEMPLATE["Parameters"]["ReservedConcurrency"]
    events = FUNCTION["Events"]
    retry_share = next(e for e in events.values() if e["Type"] == "SQS")["Properties"]["ScalingConfig"]
    admitted = [n for n in range(1, 10_000) if re.fullmatch(parameter["AllowedPattern"], str(n))]
    assert admitted
    assert min(admitted) > retry_share["MaximumConcurrency"]
    assert re.fullmatch(parameter["AllowedPattern"], parameter["Default"])
    assert (
        Deployment(TEMPLATE).resources["PostCallPushFunction"]["Properties"]["ReservedConcurrentExecutions"]
        == (parameter["Default"])
    )
    unreserved = Deployment(TEMPLATE, ReservedConcurrency="none").resources["PostCallPushFunction"]["Properties"]
    assert "ReservedConcurrentExecutions" not in unreserved


# ---------------------------------------------------------------- least privilege


@pytest.mark.parametrize(
    "overrides",
    [{}, EXISTING_TABLES | KMS_KEYS | {"RecordingsBucket": "recordings"}],
    ids=["defaults", "everything-on"],
)
def test_function_statements_name_their_resources(overrides: dict[str, str]) -> None:
    """No Allow on "*": a wildcard only ends a prefix a parameter fixes (secret names, parameter paths, objects)."""
    prefixed = ("secret:${SecretsNamePrefix}*", "parameter${ParametersPathPrefix}*", "${RecordingsBucket}/*")
    for statement in _function_statements(Deployment(TEMPLATE, **overrides)):
        assert statement["Effect"] == "Allow"
        for resource in _listed(statement["Resource"]):
            assert resource != "*", statement
            unresolved = next(
                (s["Resource"] for s in _statements(TEMPLATE["Resources"]) if s.get("Sid") == statement["Sid"]), None
            )
            if isinstance(resource, str) and "*" in resource:
                assert isinstance(unresolved, dict), statement
                assert unresolved["Fn::Sub"].endswith(prefixed), statement


def test_state_table_grants_exactly_what_the_state_store_and_circuit_breaker_call() -> None:
    """Powertools' CircuitBreakerDynamoDBPersistence: get_item, put_item (probe election), update_item."""
    statements = _by_sid(_function_statements(Deployment(TEMPLATE)))
    on_state_table = [s for s in statements.values() if s["Resource"] == {"Fn::GetAtt": ["PushStateTable", "Arn"]}]
    assert [sorted(_listed(s["Action"])) for s in on_state_table] == [
        ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    ]
    # and the release of a recovered destination's waiting calls queries the sparse index, nothing else
    assert statements["FindWaitingCalls"]["Action"] == "dynamodb:Query"
    assert statements["FindWaitingCalls"]["Resource"] == "${PushStateTable.Arn}/index/waits_on-due-index"
    assert statements["ScheduleAttempts"]["Action"] == "sqs:SendMessage"
    assert statements["ScheduleAttempts"]["Resource"] == {"Fn::GetAtt": ["RetryQueue", "Arn"]}


def test_secrets_and_parameters_are_readable_only_under_their_prefixes() -> None:
    deployment = Deployment(TEMPLATE)
    statements = _function_statements(deployment)
    store_actions = [
        (s["Sid"], a) for s in statements for a in _listed(s["Action"]) if a.startswith(("secretsmanager:", "ssm:"))
    ]
    assert store_actions == [
        ("ReadReferencedSecrets", "secretsmanager:GetSecretValue"),
        ("ReadReferencedParameters", "ssm:GetParameter"),
        # a rotated OAuth refresh token goes back where its reference points, before it is used (behaviour §13)
        ("KeepRotatedRefreshTokensInSecrets", "secretsmanager:PutSecretValue"),
        ("KeepRotatedRefreshTokensInParameters", "ssm:PutParameter"),
    ]
    by_sid = _by_sid(statements)
    assert by_sid["ReadReferencedSecrets"]["Resource"] == (
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:post-call-push/*"
    )
    assert by_sid["ReadReferencedParameters"]["Resource"] == (
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/post-call-push/*"
    )
    assert ENV["SECRETS_NAME_PREFIX"] == {"Ref": "SecretsNamePrefix"}
    assert ENV["PARAMETERS_PATH_PREFIX"] == {"Ref": "ParametersPathPrefix"}


@pytest.mark.parametrize(
    ("parameter", "refused"),
    [
        ("SecretsNamePrefix", ["", "*", "/", "a*"]),
        # "/" alone would be every parameter; without the trailing slash, /post-call-push
        # would also match /post-call-push-billing/.
        ("ParametersPathPrefix", ["", "/", "//", "/*/", "/post-call-push", "post-call-push/"]),
    ],
)
def test_prefix_parameters_refuse_prefixes_that_would_open_everything(parameter: str, refused: list[str]) -> None:
    declared = TEMPLATE["Parameters"][parameter]
    assert re.fullmatch(declared["AllowedPattern"], declared["Default"])
    for value in refused:
        assert not re.fullmatch(declared["AllowedPattern"], value), value


def test_kms_decrypt_only_through_the_services_and_only_with_a_customer_key() -> None:
    without_keys = _function_statements(Deployment(TEMPLATE))
    kms = [s for s in without_keys if any(a.startswith("kms:") for a in _listed(s["Action"]))]
    # The stack's own OAuth token key, and only for the token cache's encryption context (behaviour §13).
    [token_key] = kms
    assert token_key["Resource"] == {"Fn::GetAtt": ["OAuthTokenKey", "Arn"]}
    assert token_key["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "post-call-push-oauth-token"}}
    with_keys = _by_sid(_function_statements(Deployment(TEMPLATE, **KMS_KEYS)))
    secrets_key = with_keys["DecryptReferencedSecrets"]
    assert secrets_key["Action"] == "kms:Decrypt"
    assert secrets_key["Resource"] == KMS_KEYS["SecretsKmsKeyArn"]
    assert secrets_key["Condition"] == {
        "StringEquals": {
            "kms:ViaService": ["secretsmanager.${AWS::Region}.amazonaws.com", "ssm.${AWS::Region}.amazonaws.com"]
        }
    }
    stack_key = with_keys["UseStackKeyThroughServices"]
    assert stack_key["Resource"] == KMS_KEYS["KmsKeyArn"]
    assert set(stack_key["Condition"]["StringEquals"]) == {"kms:ViaService"}


def test_customer_key_encrypts_everything_the_stack_stores() -> None:
    deployment = Deployment(TEMPLATE, **KMS_KEYS)
    key = KMS_KEYS["KmsKeyArn"]
    for table in deployment.of_type("AWS::DynamoDB::Table").values():
        assert table["Properties"]["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": key}
    assert deployment.resources["PostCallPushLogGroup"]["Properties"]["KmsKeyId"] == key
    assert deployment.resources["PostCallPushFunction"]["Properties"]["KmsKeyArn"] == key


def test_every_checkov_skip_gives_a_reason() -> None:
    """make cfn fails on any checkov finding; a skip must say why, for the security reviewer."""
    skips = [
        skip
        for resource in TEMPLATE["Resources"].values()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), skip
        assert len(skip.get("comment", "").split()) >= 8, skip


# ---------------------------------------------------------------- alarms and dashboard


def _metric_alarm(name: str) -> dict[str, Any]:
    alarm: dict[str, Any] = Deployment(TEMPLATE).resources[name]["Properties"]
    assert alarm["Namespace"] == ENV["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": ENV["POWERTOOLS_SERVICE_NAME"]}]
    return alarm


def test_exhausted_delivery_alarms_on_the_first_call() -> None:
    alarm = _metric_alarm("DeliveryExhaustedAlarm")
    assert (alarm["MetricName"], alarm["Statistic"]) == ("DeliveryExhausted", "Sum")
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert "docs/runbook.md" in alarm["AlarmDescription"]


def test_circuit_alarm_needs_held_calls_in_every_minute_of_the_window() -> None:
    alarm = _metric_alarm("CircuitOpenAlarm")
    assert (alarm["MetricName"], alarm["Period"]) == ("CallsHeldByOpenCircuit", 60)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == "15"
    longest = Deployment(TEMPLATE, CircuitOpenAlarmMinutes="1440").resources["CircuitOpenAlarm"]["Properties"]
    assert int(longest["EvaluationPeriods"]) * longest["Period"] <= 86_400  # CloudWatch's limit
    description = Deployment(TEMPLATE).resolve(TEMPLATE["Resources"]["CircuitOpenAlarm"]["Properties"])
    assert "docs/runbook.md" in description["AlarmDescription"]
    assert "a CRM is down" in description["AlarmDescription"]


def test_retry_dead_letters_alarm() -> None:
    alarm = Deployment(TEMPLATE).resources["RetryDeadLetterQueueDepthAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["RetryDeadLetterQueue", "QueueName"]}}
    ]
    assert (alarm["MetricName"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "ApproximateNumberOfMessagesVisible",
        "GreaterThanThreshold",
        0,
    )


def test_dashboard_is_valid_json_showing_every_delivery_metric() -> None:
    body = TEMPLATE["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # ${Name} and ${Name.Attribute} become plain text, so the body must already be valid JSON.
    dashboard = json.loads(re.sub(r"\$\{([\w:.]+)\}", r"\1", body))
    metrics = [metric for widget in dashboard["widgets"] for metric in widget["properties"]["metrics"]]
    shown = {metric[1] for metric in metrics if metric[0] == ENV["POWERTOOLS_METRICS_NAMESPACE"]}
    assert DELIVERY_METRICS | {f"PushErrorKind_{kind}" for kind in ERROR_KINDS} <= shown
    queue_metrics = {(metric[1], metric[3]) for metric in metrics if metric[0] == "AWS/SQS"}
    assert {
        ("ApproximateAgeOfOldestMessage", "RetryQueue.QueueName"),
        ("ApproximateNumberOfMessagesVisible", "RetryQueue.QueueName"),
        ("ApproximateNumberOfMessagesVisible", "RetryDeadLetterQueue.QueueName"),
    } <= queue_metrics


# ---------------------------------------------------------------- deploy modes, expanded by SAM

SAM_PYTHON = ROOT / ".sam-venv" / "bin" / "python"
MODES = {"own-tables": {}, "existing-tables": EXISTING_TABLES}


@functools.cache
def _expanded(mode: str) -> dict[str, Any]:
    if not SAM_PYTHON.exists():
        pytest.skip("SAM's translator lives in the SAM CLI's venv: make .sam-venv/.installed (make test does)")
    pairs = [f"{name}={value}" for name, value in MODES[mode].items()]
    command = [str(SAM_PYTHON), "scripts/sam_transform.py", "template.yaml", "--parameter-overrides", *pairs]
    env = os.environ | {"AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=300)
    expanded: dict[str, Any] = json.loads(done.stdout)
    return expanded


@pytest.mark.parametrize("mode", MODES)
def test_expansion_wires_the_tables_of_each_deploy_mode(mode: str) -> None:
    # sam_transform.py bakes the overrides into the parameters' defaults: no overrides here.
    deployment = Deployment(_expanded(mode))
    function = deployment.of_type("AWS::Lambda::Function")["PostCallPushFunction"]["Properties"]
    env = function["Environment"]["Variables"]
    statements = _by_sid(
        [
            s
            for policy in deployment.resources["PostCallPushFunctionRole"]["Properties"]["Policies"]
            for s in policy["PolicyDocument"]["Statement"]
            if "Sid" in s
        ]
    )
    stream_sources = [
        m["Properties"]
        for m in deployment.of_type("AWS::Lambda::EventSourceMapping").values()
        if "StartingPosition" in m["Properties"]
    ]
    tables = set(deployment.of_type("AWS::DynamoDB::Table"))
    outputs = deployment.outputs
    table_arn = "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/"
    if mode == "own-tables":
        assert tables == {"CallsTable", "BotsTable", "PushStateTable"}
        assert (env["CALLS_TABLE"], env["BOTS_TABLE"]) == ({"Ref": "CallsTable"}, {"Ref": "BotsTable"})
        assert statements["ReadAndRecordCalls"]["Resource"] == {"Fn::GetAtt": ["CallsTable", "Arn"]}
        assert statements["ReadBotConfig"]["Resource"] == {"Fn::GetAtt": ["BotsTable", "Arn"]}
        assert [s["EventSourceArn"] for s in stream_sources] == [{"Fn::GetAtt": ["CallsTable", "StreamArn"]}]
        assert outputs["CallsTableName"] == {"Ref": "CallsTable"}
    else:
        assert tables == {"PushStateTable"}
        assert (env["CALLS_TABLE"], env["BOTS_TABLE"]) == ("calls", "bots")
        assert statements["ReadAndRecordCalls"]["Resource"] == table_arn + "calls"
        assert statements["ReadBotConfig"]["Resource"] == table_arn + "bots"
        assert [s["EventSourceArn"] for s in stream_sources] == [EXISTING_TABLES["ExistingCallsTableStreamArn"]]
        assert outputs["CallsTableName"] == "calls"
        assert outputs["CallsTableStreamArn"] == EXISTING_TABLES["ExistingCallsTableStreamArn"]
    assert sorted(_listed(statements["ReadAndRecordCalls"]["Action"])) == ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    # Both modes: the same delivery state, queue and secrets access.
    assert (env["PUSH_STATE_TABLE"], env["RETRY_QUEUE_URL"]) == ({"Ref": "PushStateTable"}, {"Ref": "RetryQueue"})
    assert (env["SECRETS_NAME_PREFIX"], env["PARAMETERS_PATH_PREFIX"]) == ("post-call-push/", "/post-call-push/")
    assert {"KeepDeliveryState", "ScheduleAttempts", "ReadReferencedSecrets", "ReadReferencedParameters"} <= set(
        statements
    )


@pytest.mark.parametrize("mode", MODES)
def test_expansion_polls_the_retry_queue_with_receive_rights(mode: str) -> None:
    deployment = Deployment(_expanded(mode))
    (queue_source,) = [
        m["Properties"]
        for m in deployment.of_type("AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["RetryQueue", "Arn"]}
    ]
    assert queue_source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert queue_source["ScalingConfig"]["MaximumConcurrency"] >= 2
    # SAM grants the poller's ReceiveMessage/DeleteMessage/GetQueueAttributes through this managed policy.
    managed = deployment.resources["PostCallPushFunctionRole"]["Properties"]["ManagedPolicyArns"]
    assert any(str(arn).endswith("service-role/AWSLambdaSQSQueueExecutionRole") for arn in managed)
