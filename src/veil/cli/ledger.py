"""``veil ledger``: budgets, spends, history and integrity of the privacy ledger."""

from __future__ import annotations

import csv
import sys

import typer
from rich.table import Table

from veil.cli._common import LEDGER_OPTION, console, fmt, parse_enum, print_json
from veil.errors import LedgerIntegrityError
from veil.ledger import Ledger
from veil.privacy.accountants import AccountingMethod, NeighboringRelation

app = typer.Typer(
    help="The privacy ledger: budgets per scope, spends, history, integrity.", no_args_is_help=True
)
budget_app = typer.Typer(help="Set budgets.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("set")
def budget_set(
    scope: str = typer.Option(..., "--scope", help="dataset/unit[@party], e.g. census2000/person"),
    epsilon: float = typer.Option(..., "--epsilon", help="Total epsilon for the scope."),
    delta: float = typer.Option(0.0, "--delta", help="Total delta for the scope."),
    method: str = typer.Option(
        "tightest", "--method", help="Accounting: tightest, pld, rdp, zcdp or pure."
    ),
    alert_at: float = typer.Option(
        0.8, "--alert-at", help="Warn when a spend crosses this fraction of epsilon."
    ),
    relation: str = typer.Option(
        "add-or-remove-one",
        "--relation",
        help="Neighbouring relation: add-or-remove-one or replace-one.",
    ),
    ledger: str | None = LEDGER_OPTION,
) -> None:
    """Create or change the budget of a scope."""
    m = parse_enum(AccountingMethod, method, "--method")
    r = parse_enum(NeighboringRelation, relation, "--relation")
    with Ledger(ledger) as led:
        b = led.set_budget(
            scope,
            epsilon=epsilon,
            delta=delta,
            method=m,
            neighboring_relation=r,
            alert_at=alert_at,
        )
    console.print(
        f"budget of {b.scope}: epsilon {fmt(b.epsilon)}, delta {b.delta:g} "
        f"({b.method.value} accounting, alert at {b.alert_at:.0%})"
    )


@app.command("show")
def show(
    scope: str | None = typer.Option(None, "--scope", help="Only this scope."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ledger: str | None = LEDGER_OPTION,
) -> None:
    """Budgets and what is spent of them (recomputed with the tightest accountant)."""
    with Ledger(ledger, create=False) as led:
        scopes = [scope] if scope else [str(s) for s in led.scopes()]
        statuses = [led.status(s) for s in scopes]
    if as_json:
        print_json([s.to_dict() for s in statuses])
        return
    if not statuses:
        console.print("no budgets yet; set one with `veil ledger budget set --scope S --epsilon E`")
        return
    table = Table(title=f"privacy ledger ({led.url.split('://')[0]})")
    for col in (
        "scope",
        "epsilon",
        "delta",
        "spent",
        "left",
        "used",
        "events",
        "pending",
        "abandoned",
        "method",
    ):
        table.add_column(col, justify="left" if col in ("scope", "method") else "right")
    for s in statuses:
        used = s.fraction_used
        style = "red" if used >= 1 else ("yellow" if used >= s.budget.alert_at else "")
        table.add_row(
            str(s.budget.scope),
            fmt(s.budget.epsilon),
            f"{s.budget.delta:g}",
            fmt(s.spent_epsilon),
            fmt(s.remaining_epsilon),
            f"{used:.0%}",
            str(s.events),
            str(s.pending),
            str(s.abandoned),
            s.budget.method.value,
            style=style,
        )
    console.print(table)


@app.command("history")
def history(
    scope: str | None = typer.Option(None, "--scope", help="Only this scope."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (an export of the history)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (an export of the history)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the newest N entries."),
    ledger: str | None = LEDGER_OPTION,
) -> None:
    """The append-only history: who spent what, when, and for what."""
    with Ledger(ledger, create=False) as led:
        entries = led.history(scope)
    if limit is not None:
        entries = entries[-limit:] if limit > 0 else []
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(
            [
                "seq",
                "created_at",
                "kind",
                "scope",
                "actor",
                "purpose",
                "status",
                "event_or_details",
                "entry_id",
                "ref_id",
                "hash",
            ]
        )
        for e in entries:
            writer.writerow(
                [
                    e.seq,
                    e.created_at,
                    e.kind,
                    e.scope,
                    e.actor,
                    e.purpose,
                    e.status or "",
                    e.payload,
                    e.entry_id,
                    e.ref_id or "",
                    e.hash,
                ]
            )
        return
    table = Table(title="ledger history")
    for col in ("seq", "when (UTC)", "kind", "scope", "who", "what", "event", "status"):
        table.add_column(col)
    for e in entries:
        ev = e.event
        table.add_row(
            str(e.seq),
            e.created_at[:19].replace("T", " "),
            e.kind,
            e.scope,
            e.actor,
            e.purpose,
            ev.describe() if ev is not None else e.payload,
            e.status or "",
        )
    console.print(table)


@app.command("verify")
def verify(
    expect_head: str | None = typer.Option(
        None,
        "--expect-head",
        help="A head hash recorded earlier: also detects removal of the newest entries.",
    ),
    ledger: str | None = LEDGER_OPTION,
) -> None:
    """Check the hash chain and the cached totals against the history."""
    with Ledger(ledger, create=False) as led:
        report = led.verify()
        entries = led.history() if expect_head else []
    problems = list(report.problems)
    if expect_head and not any(e.hash == expect_head for e in entries):
        problems.append(f"the recorded head {expect_head[:16]}... is no longer in the history")
    if problems:
        for p in problems:
            console.print(f"[red]✗[/red] {p}")
        raise LedgerIntegrityError(
            f"the ledger does not verify: {len(problems)} problem(s) in {report.entries} entries"
        )
    console.print(
        f"[green]✓[/green] {report.entries} entries verify; head {report.head_hash} "
        "(keep this hash elsewhere to detect truncation later)"
    )
    if report.abandoned:
        console.print(
            f"{report.abandoned} reservation(s) abandoned: declared to have released nothing, "
            "so not counted (`veil ledger history` shows them as abandoned, with who and why)"
        )
