"""`campaign create --segment [--every --until]`, `campaign follow-up` and `campaign show` of both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.scheduler.test_audience import BUTTONS, RIYADH, add_contacts, rt, segment  # noqa: F401 - the fixture
from worker.cli.campaigns import campaign_group


def cli(rt: Any, *args: str) -> Any:
    env = {"DATABASE_URL": rt.settings.database_url, "AWAL_PHONE_NUMBER_ID": "123456"}
    return CliRunner().invoke(campaign_group, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def message(tmp_path: Path) -> str:
    path = tmp_path / "message.json"
    path.write_text(json.dumps({"body_text": "Hi {{name}}", "buttons": BUTTONS}))
    return str(path)


def test_create_from_a_segment_prints_the_id_and_show_says_the_audience(rt: Any, message: str) -> None:
    add_contacts(rt, {"966500000001": {"name": "Amal", "city": "Riyadh"}, "966500000002": {"city": "Riyadh"}})
    seg = segment(rt, RIYADH)
    created = cli(rt, "create", "--name", "From segment", "--message", message, "--segment", str(seg))
    assert created.exit_code == 0, created.output
    campaign_id = int(created.stdout.strip().splitlines()[-1])
    shown = cli(rt, "show", str(campaign_id))
    assert shown.exit_code == 0 and "audience:" in shown.stdout and "2 member(s) now" in shown.stdout


def test_a_series_and_its_runs_are_shown(rt: Any, message: str) -> None:
    from datetime import timedelta

    from scheduler import series
    from worker.models import utcnow

    add_contacts(rt, {"966500000001": {"name": "Amal", "city": "Riyadh"}})
    created = cli(rt, "create", "--name", "Weekly", "--message", message, "--segment", str(segment(rt, RIYADH)),
                  "--every", "1w", "--until", "2027-06-01T00:00:00Z")
    assert created.exit_code == 0, created.output
    assert "series" in created.stderr
    series_id = int(created.stdout.strip().splitlines()[-1])
    [run] = series.start_due_runs(rt, utcnow() + timedelta(seconds=1))
    shown = cli(rt, "show", str(series_id)).stdout
    assert "every 1w until 2027-06-01 00:00 UTC" in shown and f"campaign {run:>6}" in shown and "runs:       1" in shown


@pytest.mark.parametrize(("args", "words"), [
    (["--every", "1d"], "--every"),                                   # with a CSV: a series needs a segment
    (["--segment", "1", "--recipients", "x"], "--recipients"),        # both
    ([], "--recipients"),                                             # neither
])
def test_create_refuses_a_wrong_mix_of_audience_options(rt: Any, message: str, tmp_path: Path, args: list, words: str) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("phone,name\n966500000001,A\n")
    args = [str(csv) if a == "x" else a for a in args]
    if "--segment" not in args and "--recipients" not in args and args:
        args = ["--recipients", str(csv), *args]
    result = cli(rt, "create", "--name", "x", "--message", message, *args)
    assert result.exit_code == 2 and words in result.output


def test_a_bad_every_is_named(rt: Any, message: str) -> None:
    result = cli(rt, "create", "--name", "x", "--message", message, "--segment", str(segment(rt, RIYADH)), "--every", "0d")
    assert result.exit_code == 2 and "--every" in result.output and "0d" in result.output


def test_follow_up_needs_exactly_one_result_and_prints_the_new_id(rt: Any, message: str) -> None:
    from tests.scheduler.test_audience import _sent_campaign
    from worker.models import utcnow

    source = _sent_campaign(rt, {"966500000001": dict(replied_at=utcnow(), reply_button_id="reserve")})
    assert cli(rt, "follow-up", str(source), "--message", message).exit_code == 2
    assert cli(rt, "follow-up", str(source), "--message", message, "--tapped-any", "--not-read").exit_code == 2
    made = cli(rt, "follow-up", str(source), "--message", message, "--tapped", "reserve")
    assert made.exit_code == 0, made.output
    follow_id = int(made.stdout.strip().splitlines()[-1])
    assert f"follow-up of campaign {source}" in cli(rt, "show", str(follow_id)).stdout
