"""A/B experiments end to end (issue 23, "Must show"): real `buttoncast webhooks`, `worker` and
`beat` processes on Postgres and Redis, and a sandbox that taps variant B ("20% off") far more often
than variant A. The test group gets both, the engine decides B at `decide_after`, the held rest of
the audience gets B, nobody gets two messages, and the report and `campaign show` say so."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from scheduler import experiments
from scheduler.campaigns import create_from_options
from tests.conftest import free_port, make_runtime, stack_env, wait_until
from worker.models import Campaign, Message
from worker.sandbox import SandboxClient, SandboxConfig, SandboxServer

pytestmark = pytest.mark.slow
HOOK_SECRET = "ab-e2e-hook-secret"
BUTTONS = [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]
VARIANT_A = {"body_text": "Hello {{name}}, the spring collection is here", "buttons": BUTTONS}
VARIANT_B = {"body_text": "Hello {{name}}, 20% off the spring collection", "buttons": BUTTONS}
B_TEXT = "20% off"
RECIPIENTS = 400
TEST_SHARE = 0.5
TAP_SHARE_A, TAP_SHARE_B = 0.05, 0.6


@pytest.fixture()
def ab_sandbox() -> Iterator[tuple[SandboxServer, SandboxClient]]:
    # every message read quickly; a body with "20% off" tapped 60 % of the time, any other 5 %
    server = SandboxServer(SandboxConfig(seed=23, delivered_after_s=0.1, read_after_s=0.2, tap_share=TAP_SHARE_A,
                                         tap_share_by_text={B_TEXT: TAP_SHARE_B}))
    url = server.start_in_thread()
    try:
        yield server, SandboxClient(url)
    finally:
        server.stop()


@pytest.fixture()
def stack(clean_postgres: str, redis_url: str, ab_sandbox: Any, spawn: Any) -> Iterator[Any]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    server, vendor = ab_sandbox
    env = stack_env(database_url=clean_postgres, sandbox_url=server.base_url, broker_url=redis_url,
                    AWAL_WEBHOOK_SECRET=HOOK_SECRET, WEBHOOK_METRICS_PORT="0", AWAL_RATE_LIMIT="100/s",
                    AWAL_RATE_BURST="5", DISPATCH_INTERVAL_S="0.5", SWEEP_INTERVAL_S="2", DISPATCH_LOOKAHEAD_TICKS="2")
    port = free_port()
    spawn(env, "webhooks", "--port", str(port), ready="webhook receiver on")
    server.config.update({"webhook_url": f"http://127.0.0.1:{port}/webhooks/awal", "webhook_secret": HOOK_SECRET})
    spawn(env, "worker", "--concurrency", "8")
    spawn(env, "beat", "--schedule-file", "beat-schedule", ready="beat: Starting")
    runtime = make_runtime(env)
    yield env, runtime, vendor
    runtime.close()


def write_csv(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    phones = [f"96650777{i:04d}" for i in range(n)]
    path = tmp_path / "ab-recipients.csv"
    path.write_text("phone,name\n" + "".join(f"{p},Name {i}\n" for i, p in enumerate(phones)), encoding="utf-8")
    return path, phones


def messages_by_phone(runtime: Any, cid: int) -> dict[str, Message]:
    with runtime.session_factory() as session:
        return {m.phone: m for m in session.scalars(sa.select(Message).where(Message.campaign_id == cid))}


def campaign_status(runtime: Any, cid: int) -> str:
    with runtime.session_factory() as session:
        return session.get(Campaign, cid).status


def tapped_in_db(runtime: Any, cid: int) -> int:
    with runtime.session_factory() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Message).where(
            Message.campaign_id == cid, Message.reply_button_id.is_not(None))) or 0


def letter_of(body_text: str) -> str:
    """Which variant a body the vendor received is (by its text, not by what we stored)."""
    return "B" if B_TEXT in body_text else "A"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_test_group_gets_a_and_b_the_engine_picks_b_and_the_held_rest_gets_only_b(stack: Any, tmp_path: Path) -> None:
    env, runtime, vendor = stack
    # Given a 400-recipient A/B test: half in the test group, the winner chosen 2 s after it is sent
    path, phones = write_csv(tmp_path, RECIPIENTS)
    campaign, result = create_from_options(runtime, path, name="spring-ab", template=None,
                                           variants=[VARIANT_A, VARIANT_B], test_share=TEST_SHARE, decide_after="2s")
    cid = campaign.id
    assert result.imported == RECIPIENTS
    # the test group is fixed at import, by the stable bucket of (campaign, phone)
    test_group = {p: experiments.variant_of(cid, p, TEST_SHARE, 2) for p in phones}
    test_group = {p: v for p, v in test_group.items() if v is not None}
    held = sorted(set(phones) - set(test_group))
    stored = messages_by_phone(runtime, cid)
    assert {p: m.variant for p, m in stored.items() if m.variant} == test_group
    assert {stored[p].status for p in held} <= {"held"}

    # When the whole campaign has been sent (test group, decision, then the rest)
    wait_until(lambda: campaign_status(runtime, cid) == "completed", 60, interval_s=0.5, what="campaign completed")

    # Then the test group is about half the audience, split about evenly over A and B (3 sigma)
    n_test = len(test_group)
    assert abs(n_test - RECIPIENTS * TEST_SHARE) <= 3 * math.sqrt(RECIPIENTS * TEST_SHARE * (1 - TEST_SHARE))
    split = {letter: sum(1 for v in test_group.values() if v == letter) for letter in "AB"}
    assert abs(split["A"] - split["B"]) <= 3 * math.sqrt(n_test), split

    # And nobody got two messages: the vendor's own record holds exactly one per phone
    per_phone = vendor.counts_per_phone()
    assert [p for p in phones if per_phone.get(p, 0) != 1] == []
    received = {r["phone"]: r for r in vendor.received()}
    # the test group got the variant it was assigned, as the vendor saw it
    assert {p: letter_of(received[p]["body"]["body_text"]) for p in test_group} == test_group

    # And the decision is stored: B won on the engine's test, with its numbers, and was sent to the rest
    with runtime.session_factory() as session:
        ab = experiments.results(session, cid, runtime.settings.opt_out_button_ids)
    assert ab is not None and ab["phase"] == experiments.DECIDED
    assert (ab["winner"], ab["sent_variant"], ab["decided_by"]) == ("B", "B", None)
    assert ab["decided_at"] is not None and ab["test_done_at"] is not None
    assert ab["decided_at"] - ab["test_done_at"] >= timedelta(seconds=2)   # decide_after, counted from the test's end
    decision = ab["decision"]
    assert decision["outcome"] == "winner" and decision["chosen_by"] == "engine"
    assert decision["released"] == len(held) and ab["held"] == 0
    rates = decision["rates"]
    assert (rates["A"]["trials"], rates["B"]["trials"]) == (split["A"], split["B"])   # the test group, all sent
    assert rates["B"]["rate"] > rates["A"]["rate"]
    [comparison] = decision["comparisons"]
    assert comparison["leader"] == "B" and comparison["other"] == "A"
    assert comparison["p_value"] < decision["alpha"]

    # And every held recipient got B, was sent, and the vendor received B's text
    after = messages_by_phone(runtime, cid)
    assert {(after[p].variant, after[p].status) for p in held} == {("B", "sent")}
    assert all(B_TEXT in after[p].content["body_text"] for p in held)
    assert {letter_of(received[p]["body"]["body_text"]) for p in held} == {"B"}
    assert {p: after[p].variant for p in test_group} == test_group   # nobody's variant changed

    # And taps are attributed to the variant that was sent: every tap the sandbox made lands on the
    # message it answered, and counts for that message's variant
    taps = vendor.stats()["taps"]   # {wamid: button id}
    wait_until(lambda: tapped_in_db(runtime, cid) == len(taps), 30, what="every tap recorded")
    by_wamid = {m.vendor_message_id: m for m in messages_by_phone(runtime, cid).values()}
    assert {wamid: by_wamid[wamid].reply_button_id for wamid in taps} == taps
    vendor_letter = {r["message_id"]: letter_of(r["body"]["body_text"]) for r in received.values()}
    assert all(by_wamid[wamid].variant == vendor_letter[wamid] for wamid in taps)
    with runtime.session_factory() as session:
        final = experiments.results(session, cid, runtime.settings.opt_out_button_ids)
    tapped = {v.letter: v.tapped for v in final["variants"]}
    assert tapped == {letter: sum(1 for w in taps if vendor_letter[w] == letter) for letter in "AB"}
    assert {v.letter: v.sent for v in final["variants"]} == {"A": split["A"], "B": split["B"] + len(held)}
    # the decision's successes are the test group's taps that had come back by then
    test_wamids = {received[p]["message_id"] for p in test_group}
    for letter in "AB":
        assert rates[letter]["successes"] <= sum(1 for w in taps if w in test_wamids and vendor_letter[w] == letter)

    # And `campaign show`'s lines name the decision
    lines = experiments.describe_lines(final)
    text = "\n".join(lines)
    assert "A/B test: 2 variants, metric taps, test group 50%" in lines[0], text
    assert f"variant A: {split['A']} recipient(s), sent {split['A']}" in text, text
    assert f"variant B: {split['B'] + len(held)} recipient(s), sent {split['B'] + len(held)}" in text, text
    assert f"decided by the engine at {final['decided_at']:%Y-%m-%d %H:%M:%S} UTC: winner; variant B sent to the rest " \
           f"({len(held)} recipient(s))" in text, text
    assert "why: B beats every other variant at 95%" in text, text
    shown = cli(env, "campaign", "show", str(cid))
    assert shown.returncode == 0, shown.stderr
    assert lines[-2] in shown.stdout and lines[-1] in shown.stdout, shown.stdout

    # And the report (`campaign report`, CSV) shows each recipient's variant: both, as stored
    reported = cli(env, "campaign", "report", str(cid))
    assert reported.returncode == 0, reported.stderr
    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(reported.stdout))}
    assert "variant" in next(iter(rows.values())), "the report has no variant column"
    assert {p: r["variant"] for p, r in rows.items()} == {p: m.variant for p, m in after.items()}
    assert {r["variant"] for r in rows.values()} == {"A", "B"}
