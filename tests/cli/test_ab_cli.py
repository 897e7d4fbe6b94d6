"""A/B tests from the command line (issue 23): `campaign create --variant ... --test-share ...`
from a CSV and from a segment, `campaign show` with a line per variant, `campaign decide` (audited),
`campaign list` with held recipients, the report's `variant` column, and every bad input refused
with exit 2, each problem named, nothing created."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.conftest import make_runtime, stack_env
from worker.audit import AuditEvent
from worker.cli import main
from worker.models import Campaign, Experiment, Message, utcnow
from worker.status import MessageStatus

BUTTONS = [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]
A = {"body_text": "Hello {{name}}, spring sale", "buttons": BUTTONS}
B = {"body_text": "{{name}}, 20% off this weekend only", "buttons": BUTTONS}
C = {"body_text": "Last chance, {{name}}", "buttons": BUTTONS}


def run(env: dict[str, str], *args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """The variant files, a message file, a broken one and a 40-row CSV, by name."""
    paths = {}
    for name, content in {"a.json": A, "b.json": B, "c.json": C, "d.json": A, "message.json": A,
                          "empty-body.json": {"body_text": "", "buttons": BUTTONS}}.items():
        (tmp_path / name).write_text(json.dumps(content))
        paths[name] = str(tmp_path / name)
    (tmp_path / "broken.json").write_text('{"body_text": "Hi", "buttons": [')
    paths["broken.json"] = str(tmp_path / "broken.json")
    with open(tmp_path / "r.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["phone", "name"])
        writer.writerows([f"+9665{i:08d}", f"n{i}"] for i in range(40))
    paths["r.csv"] = str(tmp_path / "r.csv")
    return paths


def env_for(database_url: str) -> dict[str, str]:
    return stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9", OPT_OUT_BUTTON_IDS="stop")


@pytest.fixture()
def env(empty_database: str) -> dict[str, str]:
    return env_for(empty_database)


def count(env: dict[str, str], model: Any) -> int:
    rt = make_runtime(env)
    try:
        with rt.session_factory() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    finally:
        rt.close()


def create(env: dict[str, str], files: dict[str, str], *extra: str) -> int:
    result = run(env, "campaign", "create", "--name", "Spring A/B", "--variant", files["a.json"],
                 "--variant", files["b.json"], *extra)
    assert result.exit_code == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


def test_two_variants_from_a_csv_show_decide_list_and_report(env: dict[str, str], files: dict[str, str]) -> None:
    # Given an A/B test of a.json and b.json on 40 recipients, half of them in the test group
    campaign_id = create(env, files, "--recipients", files["r.csv"], "--test-share", "0.5", "--decide-after", "4h",
                         "--metric", "taps", "--default-variant", "B")
    rt = make_runtime(env)
    with rt.session_factory() as session:
        experiment = session.get(Experiment, campaign_id)
        assert (experiment.test_share, experiment.decide_after_s, experiment.metric, experiment.default_variant) == (
            0.5, 4 * 3600, "taps", "B")
        rows = session.scalars(sa.select(Message).where(Message.campaign_id == campaign_id)).all()
    test_group = [m for m in rows if m.variant is not None]
    held = [m for m in rows if m.status == MessageStatus.HELD.value]
    assert len(rows) == 40 and {m.variant for m in test_group} == {"A", "B"} and len(held) == 40 - len(test_group)
    # ... and the test group sent, two of variant B tapping "reserve"
    now = utcnow()
    with rt.session_factory.begin() as session:
        session.execute(sa.update(Message).where(Message.campaign_id == campaign_id, Message.variant.is_not(None))
                        .values(status=MessageStatus.SENT.value, sent_at=now))
        tappers = [m.id for m in test_group if m.variant == "B"][:2]
        session.execute(sa.update(Message).where(Message.id.in_(tappers))
                        .values(replied_at=now, reply_button_id="reserve", reply_button_title="Reserve"))
    sent = {letter: sum(1 for m in test_group if m.variant == letter) for letter in "AB"}

    # When the operator looks at it, show prints a line per variant and who is held
    shown = run(env, "campaign", "show", str(campaign_id))
    assert shown.exit_code == 0, shown.stderr
    out = shown.stdout
    assert "A/B test: 2 variants, metric taps, test group 50%, winner 4h after the test group is sent (default B)" in out
    assert f"  variant A: {sent['A']} recipient(s), sent {sent['A']}," in out
    assert f"  variant B: {sent['B']} recipient(s), sent {sent['B']}," in out and "tapped 2 (by button: reserve 2)" in out
    assert f"{len(held)} recipient(s) held" in out and f"held {len(held)}" in out
    listed = run(env, "campaign", "list")
    assert listed.exit_code == 0 and listed.stdout.splitlines()[0].split()[:7] == [
        "id", "status", "scheduled", "(UTC)", "total", "pending", "held"]
    line = next(x for x in listed.stdout.splitlines() if x.split()[0] == str(campaign_id))
    assert line.split()[4:7] == ["40", "0", str(len(held))]

    # When the operator decides early for B: one line on stderr, the held get B, the audit trail names the CLI
    decided = run(env, "campaign", "decide", str(campaign_id), "--variant", "b")
    assert decided.exit_code == 0, decided.stderr
    assert f"campaign {campaign_id} decided by operator: variant B goes to {len(held)} held recipient(s)" in decided.stderr
    with rt.session_factory() as session:
        audit = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "campaign.decided",
                                                            AuditEvent.subject_id == campaign_id)).one()
        assert (audit.actor, audit.detail["variant"]) == ("operator", "B")
        statuses = dict(session.execute(sa.select(Message.variant, sa.func.count()).where(
            Message.campaign_id == campaign_id, Message.status == MessageStatus.PENDING.value).group_by(Message.variant)).all())
    rt.close()
    assert statuses == {"B": len(held)}
    assert "decided by operator at" in run(env, "campaign", "show", str(campaign_id)).stdout
    again = run(env, "campaign", "decide", str(campaign_id), "--variant", "A")
    assert again.exit_code == 1 and "was decided already: variant B" in again.stderr

    # Then the report says who got which variant, right after the phone
    reported = run(env, "campaign", "report", str(campaign_id))
    assert reported.exit_code == 0
    table = list(csv.reader(io.StringIO(reported.stdout)))
    assert table[0][:4] == ["message_id", "phone", "variant", "status"]
    by_phone = {r[1]: r[2] for r in table[1:]}
    assert len(by_phone) == 40 and set(by_phone.values()) == {"A", "B"}
    assert all(by_phone[m.phone] == m.variant for m in test_group)


def test_a_segment_campaign_takes_the_same_options(env: dict[str, str], files: dict[str, str]) -> None:
    from tests.scheduler.test_audience import add_contacts, segment

    rt = make_runtime(env)
    add_contacts(rt, {f"9665{i:08d}": {"name": f"n{i}"} for i in range(30)})
    segment_id = segment(rt, {"attribute": "name", "exists": True})
    campaign_id = create(env, files, "--segment", str(segment_id), "--test-share", "0.3", "--decide-after", "1d",
                         "--metric", "replies")
    with rt.session_factory() as session:
        experiment = session.get(Experiment, campaign_id)
        campaign = session.get(Campaign, campaign_id)
        assert (experiment.test_share, experiment.metric, experiment.default_variant) == (0.3, "replies", "A")
        assert [v["body_text"] for v in campaign.variants] == [A["body_text"], B["body_text"]]
    rt.close()
    shown = run(env, "campaign", "show", str(campaign_id))
    assert shown.exit_code == 0 and "A/B test: 2 variants, metric replies, test group 30%" in shown.stdout


def test_a_campaign_of_one_message_has_an_empty_variant_column_and_nothing_to_decide(
        env: dict[str, str], files: dict[str, str]) -> None:
    created = run(env, "campaign", "create", "--name", "one", "--message", files["message.json"],
                  "--recipients", files["r.csv"])
    campaign_id = created.stdout.strip().splitlines()[-1]
    rows = list(csv.DictReader(io.StringIO(run(env, "campaign", "report", campaign_id).stdout)))
    assert len(rows) == 40 and {r["variant"] for r in rows} == {""}
    assert "A/B test" not in run(env, "campaign", "show", campaign_id).stdout
    refused = run(env, "campaign", "decide", campaign_id, "--variant", "A")
    assert refused.exit_code == 1 and "is not an A/B test" in refused.stderr


def test_decide_refuses_a_report_only_test_an_unknown_letter_and_an_unknown_campaign(
        env: dict[str, str], files: dict[str, str]) -> None:
    report_only = create(env, files, "--recipients", files["r.csv"], "--test-share", "1")
    refused = run(env, "campaign", "decide", str(report_only), "--variant", "B")
    assert refused.exit_code == 1 and "no winner step" in refused.stderr
    testing = create(env, files, "--recipients", files["r.csv"], "--test-share", "0.2", "--decide-after", "1h")
    bad_letter = run(env, "campaign", "decide", str(testing), "--variant", "D")
    assert bad_letter.exit_code == 2
    assert "invalid: --variant: 'D' is not one of this campaign's variants (A, B)" in bad_letter.stderr
    assert run(env, "campaign", "decide", "999999", "--variant", "A").exit_code == 1
    rt = make_runtime(env)
    with rt.session_factory() as session:   # nothing was decided
        assert session.scalar(sa.select(sa.func.count()).where(AuditEvent.action == "campaign.decided")) == 0
        assert session.scalar(sa.select(sa.func.count()).where(Message.status == MessageStatus.HELD.value)) > 0
    rt.close()


BAD_INPUT = [
    (["--variant", "a.json"], ["--variant: has 1 message(s); an A/B test takes 2 or 3 variants"]),
    (["--variant", "a.json", "--variant", "b.json", "--variant", "c.json", "--variant", "d.json"],
     ["--variant: has 4 message(s)"]),
    (["--variant", "a.json", "--variant", "b.json", "--message", "message.json"],
     ["--message: and --variant exclude each other"]),
    (["--variant", "a.json", "--variant", "b.json", "--test-share", "0"], ["--test-share: 0.0 is outside (0, 1]"]),
    (["--variant", "a.json", "--variant", "b.json", "--test-share", "1.5", "--decide-after", "4h"],
     ["--test-share: 1.5 is outside (0, 1]"]),
    (["--variant", "a.json", "--variant", "b.json", "--test-share", "1", "--decide-after", "4h"],
     ["--decide-after: has no use with test_share 1"]),
    (["--variant", "a.json", "--variant", "b.json", "--test-share", "0.2"],
     ["--decide-after: is required with a test share below 1"]),
    (["--variant", "a.json", "--variant", "b.json", "--metric", "clicks"],
     ["--metric: 'clicks' is not a metric; use one of taps, replies, reads"]),
    (["--variant", "a.json", "--variant", "b.json", "--default-variant", "C"],
     ["--default-variant: 'C' is not one of the variants (A, B)"]),
    (["--variant", "a.json", "--variant", "empty-body.json"], ["empty-body.json: body_text: is empty"]),
    (["--variant", "broken.json", "--variant", "b.json"], ["--variant: ", "broken.json is not valid JSON: line 1"]),
    (["--message", "message.json", "--test-share", "0.5"], ["--test-share: test_share belong(s) to an A/B test"]),
    # every problem at once
    (["--variant", "empty-body.json", "--test-share", "1.5", "--metric", "clicks"],
     ["--variant: has 1 message(s)", "empty-body.json: body_text: is empty", "--test-share: 1.5 is outside",
      "--metric: 'clicks' is not a metric"]),
]


@pytest.mark.parametrize("args, said", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
@pytest.mark.parametrize("audience", ["csv", "segment"])
def test_bad_input_exits_2_naming_every_problem_and_creates_nothing(
        sqlite_url: str, files: dict[str, str], args: list[str], said: list[str], audience: str) -> None:
    env = env_for(sqlite_url)
    who = ["--recipients", files["r.csv"]] if audience == "csv" else ["--segment", "1"]
    if audience == "segment":
        from tests.scheduler.test_audience import segment
        rt = make_runtime(env)
        assert segment(rt, {"attribute": "name", "exists": True}) == 1
        rt.close()
    result = run(env, "campaign", "create", "--name", "bad", *[files.get(a, a) for a in args], *who)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    for words in said:
        assert words in result.stderr, result.stderr
    assert all(line.startswith("invalid: ") for line in result.stderr.splitlines() if line.strip()), result.stderr
    assert (count(env, Campaign), count(env, Experiment), count(env, Message)) == (0, 0, 0)
