"""The consent commands as an operator runs them (issue 13 items 4, 5 and 8), on SQLite and Postgres:
`contacts optout/optin/show/import/list`, `campaign create` with --opt-out-button, the pre-flight
window line, --require-open-window and --expires-at, and `send --expires-at`."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from tests.conftest import stack_env
from worker.cli import main
from worker.models import utcnow

_seq = iter(range(5_000_000, 9_999_999))


def new_phone() -> str:
    return f"96650{next(_seq):07d}"   # valid Saudi mobile numbers


@pytest.fixture()
def env(database_url, sandbox):  # noqa: ANN001
    return stack_env(database_url=database_url, sandbox_url=sandbox[0])


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_optout_show_optin_and_the_history_an_operator_sees(env) -> None:
    """Issue 13 item 4: contacts optout PHONE... --reason; show; optin."""
    a, b = new_phone(), new_phone()
    out = run(env, "contacts", "optout", "+" + a, b, "--reason", "asked by phone")
    assert out.exit_code == 0 and out.stdout.splitlines() == [f"{a}: opted out", f"{b}: opted out"]
    assert run(env, "contacts", "optout", a).stdout.strip() == f"{a}: was already opted out"
    shown = run(env, "contacts", "show", a).stdout
    assert "OPTED OUT since" in shown and "by operator (asked by phone)" in shown and "closed (never wrote to us)" in shown
    assert run(env, "contacts", "optin", a).stdout.strip() == f"{a}: opted back in"
    shown = run(env, "contacts", "show", a).stdout
    assert "may be messaged (opted back in" in shown and "opt_in" in shown and "opt_out" in shown
    missing = run(env, "contacts", "show", new_phone())
    assert missing.exit_code == 1 and "no contact" in missing.stderr


def test_import_optouts_reports_like_the_campaign_import_and_list_exports_them(env, tmp_path) -> None:
    """Issue 13 item 4: contacts import --optouts FILE.csv; contacts list --opted-out --format csv|json."""
    phones = [new_phone() for _ in range(3)]
    path = tmp_path / "suppress.csv"
    path.write_text("phone,reason\n" + "".join(f"{p},=HYPERLINK(1)\n" for p in phones) + "12ab,x\n")
    result = run(env, "contacts", "import", "--optouts", str(path))
    assert result.exit_code == 0
    assert "opted out 3 contact(s); 0 already opted out; rejected 1 row(s)" in result.stderr and "line 5:" in result.stderr
    rows = list(csv.DictReader(io.StringIO(run(env, "contacts", "list", "--opted-out").stdout)))
    mine = {r["phone"]: r for r in rows if r["phone"] in phones}
    assert set(mine) == set(phones) and {r["opt_out_source"] for r in mine.values()} == {"import"}
    assert {r["opt_out_note"] for r in mine.values()} == {"'=HYPERLINK(1)"}   # never a live formula
    doc = json.loads(run(env, "contacts", "list", "--opted-out", "--format", "json").stdout)
    assert {d["phone"] for d in doc} >= set(phones) and all(d["opted_out"] for d in doc)


def test_campaign_create_appends_the_opt_out_button_and_prints_the_preflight_line(env, tmp_path) -> None:
    """Issue 13 items 2, 4 and 5: the button counts toward 3; opted-out recipients and the open-window
    share are reported before anything is sent; show repeats the share."""
    stopped, other = new_phone(), new_phone()
    assert run(env, "contacts", "optout", stopped).exit_code == 0
    message = tmp_path / "message.json"
    message.write_text(json.dumps({"body_text": "Offer", "buttons": [{"id": "yes", "title": "Yes"}]}))
    recipients = tmp_path / "r.csv"
    recipients.write_text(f"phone\n{stopped}\n{other}\n")
    until = (utcnow() + timedelta(hours=24)).isoformat()
    created = run(env, "campaign", "create", "--name", "x", "--message", str(message), "--recipients", str(recipients),
                  "--phone-number-id", "1", "--opt-out-button", "stop:Stop offers", "--require-open-window",
                  "--expires-at", until)
    assert created.exit_code == 0, created.output
    assert "opted out: 1 of the imported recipient(s)" in created.stderr
    assert "pre-flight: 24-hour window open now for 0 of 2 recipient(s) (0.0%)" in created.stderr
    assert "window_closed" in created.stderr
    campaign_id = created.stdout.strip().splitlines()[-1]
    shown = run(env, "campaign", "show", campaign_id).stdout
    assert "audience:   24-hour window open now for 0 of 2" in shown and "require open window" in shown
    report = list(csv.DictReader(io.StringIO(run(env, "campaign", "report", campaign_id).stdout)))
    assert {r["contact_opted_out"] for r in report} == {"True", "False"}

    three = tmp_path / "three.json"
    three.write_text(json.dumps({"body_text": "Offer", "buttons": [{"id": c, "title": c} for c in "abc"]}))
    refused = run(env, "campaign", "create", "--name", "y", "--message", str(three), "--recipients", str(recipients),
                  "--phone-number-id", "1", "--opt-out-button", "stop:Stop offers")
    assert refused.exit_code == 2 and "buttons" in refused.stderr


def test_send_with_expires_at_in_the_past_or_without_offset(env) -> None:
    """Issue 13 item 8: `send --expires-at` is validated like every time the CLI takes."""
    bad = run(env, "send", "--phone", new_phone(), "--body", "x", "--button", "a:A", "--phone-number-id", "1",
              "--expires-at", "2030-01-01T00:00:00")
    assert bad.exit_code == 2 and "expires_at" in bad.stderr
    ok = run(env, "send", "--phone", new_phone(), "--body", "x", "--button", "a:A", "--phone-number-id", "1",
             "--require-open-window", "--expires-at", (utcnow() + timedelta(hours=1)).isoformat())
    assert ok.exit_code == 0 and ok.stdout.strip().isdigit()
    shown = run(env, "message", "show", ok.stdout.strip()).stdout
    assert "require open window: yes" in shown
