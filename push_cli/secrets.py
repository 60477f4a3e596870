"""``secrets migrate``: a bot's plaintext credentials moved into Secrets Manager, references left in its config.

    post-call-push secrets migrate --bot-id BOT [--secret-name NAME] [--kms-key-id KEY] [--dry-run]
        [--secrets-name-prefix P] [--parameters-path-prefix P]

The token, every header value that is not a template, every signing secret and
the OAuth ``auth`` map's ``client_secret``, ``refresh_token`` and ``private_key``
go into ONE secret (a JSON object) named ``<SECRETS_NAME_PREFIX><scope>/<bot_id>/credentials``
by default, where scope is the bot's tenant_id, else its bot_id (contract §12):
the function resolves a bot's references only under its scope, so a name
outside it is refused before anything is written. The bot's ``post_call_push``
is rewritten to ``{"secret": NAME, "key": ...}`` references. The secret is
written and read back first (through the same scope check the function
applies); the config is then replaced only if it is still exactly what was
read, so an edit made meanwhile is never lost. No value is ever printed: each
is shown as its length. The plaintext stays in the Bots table's point-in-time
backups for 35 days, so the operator is told to rotate what moved.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.console import Console

from crm_push import logsafety
from crm_push.adapters.dynamodb import from_item
from crm_push.config import SecretRef, load_bot_config
from crm_push.secrets import ReferencePrefixes, SecretUnavailable, StoreSecretResolver, scoped_resolver
from push_cli.context import EXIT_OK, EXIT_PROBLEM, Context, fail
from push_cli.display import print_json, row, table

MIGRATE_LEAF = "credentials"  # migrate's secret: <SECRETS_NAME_PREFIX><scope>/<bot_id>/credentials
ROTATE_ADVICE = (
    "rotate the moved credentials at the CRM now and put the new values in the secret: the old plaintext "
    "stays in the Bots table's point-in-time-recovery backups for 35 days"
)
_AUTH_SCHEMES = ("bearer", "basic", "token", "apikey", "api-key", "digest")


def add_parser(commands: Any, parents: Sequence[argparse.ArgumentParser], epilog: str) -> None:
    """The ``secrets`` command and its actions, on main's subparsers."""
    secrets = commands.add_parser(
        "secrets",
        parents=list(parents),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="keep a bot's CRM credentials in Secrets Manager instead of its config",
        description="Manage where a bot's CRM credentials live (contract §11).",
    )
    actions = secrets.add_subparsers(dest="secrets_action", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate",
        parents=list(parents),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="move a bot's plaintext token, header values and signing secret into one secret",
        description="Move a bot's plaintext token, header values (templates stay) and signing secret into one "
        "Secrets Manager secret (a JSON object) and rewrite its post_call_push to references. The secret is "
        "written and read back before the config changes; the config is replaced only if nobody changed it "
        "meanwhile. Values are never shown.",
    )
    migrate.add_argument("--bot-id", required=True, help="the bot whose credentials move")
    migrate.add_argument(
        "--secret-name",
        help=f"the secret to write, under <secrets prefix><scope>/ (default <secrets prefix><scope>/<bot_id>/"
        f"{MIGRATE_LEAF}; scope is the bot's tenant_id, else its bot_id)",
    )
    migrate.add_argument("--kms-key-id", help="KMS key for a new secret (default: the account's aws/secretsmanager)")
    migrate.add_argument("--dry-run", action="store_true", help="show what would move; write nothing")
    migrate.add_argument("--json", action="store_true", help="machine-readable output")
    add_prefix_options(migrate)


def add_prefix_options(parser: argparse.ArgumentParser) -> None:
    """The deployed stack's reference prefixes, for the commands that apply the scope rule (lint, migrate)."""
    parser.add_argument(
        "--secrets-name-prefix",
        help="the stack's SecretsNamePrefix ($SECRETS_NAME_PREFIX, else the function's default post-call-push/)",
    )
    parser.add_argument(
        "--parameters-path-prefix",
        help="the stack's ParametersPathPrefix ($PARAMETERS_PATH_PREFIX, else the function's default /post-call-push/)",
    )


def deployed_prefixes(args: argparse.Namespace, ctx: Context) -> ReferencePrefixes:
    """The prefixes the function was deployed with: the options, else the environment as the function reads it."""
    settings = ctx.settings_values()
    return ReferencePrefixes(
        getattr(args, "secrets_name_prefix", None) or settings.secrets_name_prefix,
        getattr(args, "parameters_path_prefix", None) or settings.parameters_path_prefix,
    )


def store_resolver(ctx: Context) -> StoreSecretResolver:
    """A resolver reading with the operator's credentials, uncached: lint must see the store as it is now."""
    logsafety.install()
    return StoreSecretResolver(_client(ctx, "secretsmanager"), _client(ctx, "ssm"), max_age=0)


def _client(ctx: Context, service: str) -> Any:
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    try:
        return ctx.session().client(
            service,
            endpoint_url=ctx.endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10),
        )
    except NoRegionError:
        fail("no AWS region: pass --region or set AWS_REGION")


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    where: str  # the config path: "token", "headers.X-Api-Key", "signing_secret[1]"
    key: str  # the key in the secret's JSON object
    value: str = field(repr=False)

    def shown(self) -> dict[str, str]:
        return {"where": self.where, "key": self.key, "value": masked(self.value)}


@dataclass
class MigrationReport:
    bot_id: str
    scope: str  # the bot's tenant_id, else its bot_id: the secret lives under <prefix><scope>/
    secret_name: str
    dry_run: bool
    moves: list[dict[str, str]] = field(default_factory=list)
    left_in_place: list[str] = field(default_factory=list)
    write: Literal["create", "update", "none"] = "none"
    kept_keys: int = 0  # keys already in an existing secret, kept as they were
    config_rewritten: bool = False
    rotate: str = ""  # what to do about the plaintext left in backups, once values moved
    problem: str = ""


def masked(value: str) -> str:
    """A credential as an operator may see it: its auth scheme and length, never a character of it."""
    scheme, space, rest = value.partition(" ")
    if space and scheme.lower() in _AUTH_SCHEMES:
        return f"{scheme} ***({len(rest)} chars)"
    return f"***({len(value)} chars)"


def plan_moves(push: Mapping[str, Any]) -> tuple[list[Move], list[str]]:
    """What moves out of a ``post_call_push`` map as written, and what stays (with why)."""
    moves: list[Move] = []
    left: list[str] = []
    token = push.get("token")
    if isinstance(token, str) and token:
        moves.append(Move("token", "token", token))
    headers = push.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if not isinstance(value, str) or not value:
                continue
            if "{{" in value:
                left.append(f"headers.{name}: a template filled from call data at push time, left in place")
            else:
                moves.append(Move(f"headers.{name}", f"headers.{name}", value))
    signing = push.get("signing_secret")
    entries = list(signing) if isinstance(signing, (list, tuple)) else [signing]
    for index, entry in enumerate(entries):
        if isinstance(entry, str) and entry:
            where = f"signing_secret[{index}]" if isinstance(signing, (list, tuple)) else "signing_secret"
            moves.append(Move(where, where, entry))
    moves.extend(_auth_moves(push.get("auth")))
    return moves, left


# The OAuth credentials that are secrets (contract §13); client_id names the app and stays in the config.
_AUTH_SECRETS = ("client_secret", "refresh_token", "private_key")


def _auth_moves(auth: Any) -> list[Move]:
    """``auth``'s plaintext secrets. A moved refresh token is rotated in the secret from then on (its key)."""
    if not isinstance(auth, Mapping):
        return []
    return [
        Move(f"auth.{name}", f"auth.{name}", value)
        for name in _AUTH_SECRETS
        if isinstance(value := auth.get(name), str) and value
    ]


def rewritten(push_attribute: Mapping[str, Any], moves: Sequence[Move], secret_name: str) -> dict[str, Any]:
    """The DynamoDB ``post_call_push`` map with each moved value replaced by its reference; all else as stored."""
    new = copy.deepcopy(dict(push_attribute))
    fields = new["M"]

    def reference(key: str) -> dict[str, Any]:
        return {"M": {"secret": {"S": secret_name}, "key": {"S": key}}}

    for move in moves:
        if move.where == "token":
            fields["token"] = reference(move.key)
        elif move.where.startswith("headers."):
            fields["headers"]["M"][move.where.removeprefix("headers.")] = reference(move.key)
        elif move.where.startswith("auth."):
            fields["auth"]["M"][move.where.removeprefix("auth.")] = reference(move.key)
        elif move.where == "signing_secret":
            fields["signing_secret"] = reference(move.key)
        else:  # signing_secret[i]: a list entry
            index = int(move.where.removeprefix("signing_secret[").removesuffix("]"))
            fields["signing_secret"]["L"][index] = reference(move.key)
    return new


# --- the command ------------------------------------------------------------------------------


def cmd_secrets(args: argparse.Namespace, ctx: Context, console: Console, clock: Any = None) -> int:
    logsafety.install()
    actions = {"migrate": cmd_migrate}  # argparse admits only these
    return actions[args.secrets_action](args, ctx, console)


def cmd_migrate(args: argparse.Namespace, ctx: Context, console: Console) -> int:
    if not ctx.bots_table:
        fail("no Bots table: pass --bots-table or set BOTS_TABLE")
    from botocore.exceptions import ClientError

    dynamodb = ctx.dynamodb()
    response = dynamodb.get_item(TableName=ctx.bots_table, Key={"bot_id": {"S": args.bot_id}}, ConsistentRead=True)
    item = response.get("Item")
    if not item:
        fail(f"bot {args.bot_id} is not in the Bots table {ctx.bots_table}")
    push_attribute = item.get("post_call_push")
    if not push_attribute or "M" not in push_attribute:
        fail(f"bot {args.bot_id} has no post_call_push map: nothing to migrate")
    bot = load_bot_config(from_item(item), args.bot_id)
    prefixes = deployed_prefixes(args, ctx)
    default_name = f"{prefixes.secret_base(bot.scope)}{args.bot_id}/{MIGRATE_LEAF}"
    secret_name = args.secret_name or default_name
    try:
        prefixes.check(SecretRef(secret=secret_name), bot.scope)
    except (SecretUnavailable, ValueError):  # ValueError: pydantic refuses the name itself (spaces, control chars)
        # The function would refuse every reference to it: writing it would break the bot's pushes for good.
        whose = f"tenant {bot.tenant_id}" if bot.tenant_id else f"bot {args.bot_id}, which has no tenant_id"
        fail(
            f"secret {secret_name} is outside the scope of {whose}: the function would never read it. "
            f"Pass a --secret-name under {prefixes.secret_base(bot.scope)} (no '.' or '..' segments), "
            f"or none for {default_name}"
        )
    report = MigrationReport(args.bot_id, bot.scope, secret_name, args.dry_run)
    if bot.push_error:
        # A value that fails its checks (a malformed signing secret, a header with CR/LF) would become a
        # reference that fails every push; say so before moving anything.
        report.problem = f"the config is invalid, fix it first: {bot.push_error}"
        return _finish(console, report, args.json, EXIT_PROBLEM)

    moves, report.left_in_place = plan_moves(from_item({"p": push_attribute})["p"])
    report.moves = [move.shown() for move in moves]
    if not moves:
        return _finish(console, report, args.json, EXIT_OK)

    secretsmanager = _client(ctx, "secretsmanager")
    existing = _existing_secret(secretsmanager, report.secret_name)
    report.write = "create" if existing is None else "update"
    report.kept_keys = len(set(existing or {}) - {move.key for move in moves})
    if args.dry_run:
        return _finish(console, report, args.json, EXIT_OK)

    document = {**(existing or {}), **{move.key: move.value for move in moves}}
    _write_secret(secretsmanager, report, document, existing is not None, args.kms_key_id)
    _read_back(ctx, report, moves, prefixes)
    try:
        dynamodb.update_item(
            TableName=ctx.bots_table,
            Key={"bot_id": {"S": args.bot_id}},
            UpdateExpression="SET post_call_push = :new",
            ConditionExpression="post_call_push = :old",
            ExpressionAttributeValues={
                ":new": rewritten(push_attribute, moves, report.secret_name),
                ":old": push_attribute,
            },
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        report.problem = (
            f"bot {args.bot_id}'s post_call_push changed while migrating: its config is untouched; the secret "
            f"{report.secret_name} holds the values read before the change. Run the command again."
        )
        return _finish(console, report, args.json, EXIT_PROBLEM)
    report.config_rewritten = True
    report.rotate = ROTATE_ADVICE  # the bot now reads the secret: the old values can and must be retired
    return _finish(console, report, args.json, EXIT_OK)


def _existing_secret(client: Any, name: str) -> dict[str, Any] | None:
    """The secret's JSON object, or None when there is no such secret."""
    from botocore.exceptions import ClientError

    try:
        current = client.get_secret_value(SecretId=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise
    try:
        document = json.loads(current.get("SecretString") or "")
    except ValueError:
        document = None
    if not isinstance(document, dict):
        fail(f"secret {name} exists and is not a JSON object: pass --secret-name to write another one", EXIT_PROBLEM)
    return document


def _write_secret(
    client: Any, report: MigrationReport, document: dict[str, Any], exists: bool, kms_key_id: str | None
) -> None:
    text = json.dumps(document)
    if exists:
        client.put_secret_value(SecretId=report.secret_name, SecretString=text)
        return
    options: dict[str, Any] = {
        "Name": report.secret_name,
        "SecretString": text,
        "Description": f"post-call push credentials of bot {report.bot_id} (post-call-push secrets migrate)",
    }
    if kms_key_id:
        options["KmsKeyId"] = kms_key_id
    client.create_secret(**options)


def _read_back(ctx: Context, report: MigrationReport, moves: Sequence[Move], prefixes: ReferencePrefixes) -> None:
    """The references resolve to the values, read the way the function reads them; else nothing is rewritten."""
    resolver = scoped_resolver(store_resolver(ctx), report.scope, prefixes.secrets_name, prefixes.parameters_path)
    for move in moves:
        try:
            same = resolver.resolve(SecretRef(secret=report.secret_name, key=move.key)) == move.value
        except SecretUnavailable as exc:
            fail(f"the secret was written but does not read back ({exc}): the config is untouched", EXIT_PROBLEM)
        if not same:
            fail(
                f"secret {report.secret_name} key {move.key} reads back different: the config is untouched",
                EXIT_PROBLEM,
            )


def _finish(console: Console, report: MigrationReport, as_json: bool, code: int) -> int:
    if as_json:
        print_json(console, asdict(report))
        return code
    if report.problem:
        console.print(f"error: {report.problem}")
        return code
    if not report.moves:
        console.print(f"bot {report.bot_id}: no plaintext credentials in post_call_push, nothing to migrate")
        for note in report.left_in_place:
            console.print(f"  - {note}")
        return code
    verb = "would move" if report.dry_run else "moved"
    grid = table(
        f"bot {report.bot_id}: credentials {verb} to secret {report.secret_name}", "config", "value", "reference"
    )
    for move in report.moves:
        reference = json.dumps({"secret": report.secret_name, "key": move["key"]})
        row(grid, f"post_call_push.{move['where']}", move["value"], reference)
    console.print(grid)
    kept = f", keeping its {report.kept_keys} other key(s)" if report.kept_keys else ""
    if report.dry_run:
        action = "create" if report.write == "create" else f"update{kept}"
        console.print(f"dry run: would {action} secret {report.secret_name} and rewrite the config; wrote nothing")
        console.print(f"after the migration, {ROTATE_ADVICE}")
    else:
        done = "created" if report.write == "create" else f"updated{kept}"
        console.print(f"secret {report.secret_name} {done}; read back; bot {report.bot_id}'s config rewritten")
        console.print(f"next: {report.rotate}")
        console.print(f"check the bot as the function will read it: post-call-push lint --bot-id {report.bot_id}")
    for note in report.left_in_place:
        console.print(f"  - {note}")
    return code
