"""The Grafana dashboard reads only what our processes serve (issue 26 item 6).

docs/grafana/buttoncast.json is provisioned by compose's `monitoring` profile on the Prometheus of
docs/prometheus/prometheus.yml. A panel whose query names a metric nobody exports shows "No data"
for ever, and nothing else says so: these tests read every query, start the processes Prometheus
scrapes (`buttoncast worker`, `buttoncast webhooks`) and check their /metrics, check that code a
scraped process runs sets each metric, and that the scrape targets, the datasource and the mounts
agree with docker-compose.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT, free_port, stack_env, wait_until
from worker import metrics
from worker.settings import METRICS_PORT, WEBHOOK_METRICS_PORT, RateLimit

DASHBOARD = REPO_ROOT / "docs" / "grafana" / "buttoncast.json"
DATASOURCES = REPO_ROOT / "docs" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = REPO_ROOT / "docs" / "grafana" / "provisioning" / "dashboards" / "buttoncast.yml"
PROMETHEUS = REPO_ROOT / "docs" / "prometheus" / "prometheus.yml"
COMPOSE = REPO_ROOT / "docker-compose.yml"

#: the `buttoncast` commands that serve /metrics, and the setting naming their port
METRICS_COMMANDS = {"worker": "METRICS_PORT", "run": "METRICS_PORT", "webhooks": "WEBHOOK_METRICS_PORT"}
#: the modules that start those endpoints (worker/cli/ops.py: worker and run)
SERVING_MODULES = {"worker/cli/ops.py", "worker/cli/webhooks.py"}
#: what the webhook receiver's /metrics must carry for the dashboard (the rest comes from workers)
SERVED_BY_WEBHOOKS = {"buttoncast_late_failures_total", "buttoncast_auto_pauses_total"}
#: code that runs only in processes nobody scrapes (the API and console, one-shot commands):
#: a metric set only there never reaches Prometheus
UNSCRAPED = ("worker/api/", "worker/console/", "worker/asgi.py", "worker/cli/")


# --- PromQL: which metrics an expression reads ----------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers once label values, label
    matchers, ranges and grouping label lists are removed, less functions (a name followed by
    `(`), keywords, Grafana variables (`$x`) and number parts (`5m`, `1e3`)."""
    text = _GROUPINGS.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub('""', expr))))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end():].lstrip()[:1]
        if before.isdigit() or before in "$." or after == "(" or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def series_names(exposition: str) -> set[str]:
    """The series names a /metrics text makes: a Counter `x` is stored as x_total (and x_created),
    a Histogram `x` as x_bucket, x_sum and x_count; a family with no samples yet (labels never
    set) counts too, as Prometheus will store it once a process sets one."""
    return {name for family in text_string_to_metric_families(exposition)
            for name in _series_of(family.name, family.type)}


def _series_of(name: str, kind: str) -> list[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",),
                "gaugehistogram": ("_bucket", "_gsum", "_gcount")}.get(kind, ("",))
    return [name + suffix for suffix in suffixes]


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' collapsed panels included."""
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def unexported(dashboard: dict, exported: set[str]) -> dict[str, list[str]]:
    """Metric name -> the panels that read it, for every name `exported` lacks."""
    missing: dict[str, list[str]] = {}
    for title, expr in dashboard_queries(dashboard):
        for name in sorted(metric_names(expr) - exported):
            missing.setdefault(name, []).append(title)
    return missing


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


def test_metric_names_reads_promql_as_prometheus_does() -> None:
    """Label names, label values, ranges, functions, grouping lists and keywords are not metrics."""
    assert metric_names('sum by (outcome) (rate(buttoncast_messages_total{outcome="sent",x=~"a|b"}[$__rate_interval]))') \
        == {"buttoncast_messages_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(a_seconds_bucket[5m] offset 1h)))") == {"a_seconds_bucket"}
    assert metric_names("a and on (instance) (b == scalar(max(b))) or c unless ignoring(x) group_left(y) d") == {"a", "b", "c", "d"}
    assert metric_names("time() - max(ts_seconds) > bool 1e3") == {"ts_seconds"}
    assert metric_names('{__name__="x"} + sum(rate(y:recorded[1m])) without (job)') == {"y:recorded"}


def test_a_dashboard_metric_that_nobody_serves_is_named_with_its_panel() -> None:
    """The check fails on a misspelt metric, and on a Counter or Histogram read by its bare name
    (Prometheus stores x_total, x_bucket: `x` itself is no series)."""
    exported = series_names(generate_latest(REGISTRY).decode())
    dashboard = load_dashboard()
    assert unexported(dashboard, exported) == {}
    for right, wrong in (("buttoncast_queue_lag_seconds", "buttoncast_queue_lag_secs"),
                         ("buttoncast_late_failures_total", "buttoncast_late_failures"),
                         ("buttoncast_outcome_commit_seconds_bucket", "buttoncast_outcome_commit_seconds")):
        text = DASHBOARD.read_text(encoding="utf-8")
        assert right in text
        renamed = json.loads(re.sub(rf"\b{right}\b", wrong, text, count=1))
        missing = unexported(renamed, exported)
        assert list(missing) == [wrong] and len(missing[wrong]) == 1, missing


def test_every_metric_the_dashboard_reads_is_served_by_the_processes_prometheus_scrapes(
        sqlite_url: str, redis_url: str, spawn) -> None:  # noqa: ANN001
    # Given: a real `buttoncast worker` (on a queue nobody publishes to) and `buttoncast webhooks`,
    # each serving /metrics on a port of its own, the worker at a 20/s limit with 2 % headroom
    worker_port, webhooks_port = free_port(), free_port()
    env = stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9", broker_url=redis_url,
                    METRICS_PORT=str(worker_port), WEBHOOK_METRICS_PORT=str(webhooks_port),
                    AWAL_RATE_LIMIT="20/s", AWAL_RATE_HEADROOM="0.02", AWAL_WEBHOOK_SECRET="dashboard-test")
    worker = spawn(env, "worker", "--processes", "1", "--concurrency", "2", "--queues", "buttoncast.dashboard-test",
                   ready=None)
    receiver = spawn(env, "webhooks", "--port", "0", ready=None)

    # When: each is scraped as Prometheus would
    def scrape(port: int, process) -> str | None:  # noqa: ANN001 - tests.conftest.WorkerProcess
        assert process.proc.poll() is None, f"it exited: {process.log_path.read_text(errors='replace')[-3000:]}"
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        except requests.ConnectionError:
            return None
        return answer.text if answer.ok else None

    worker_text = wait_until(lambda: scrape(worker_port, worker), what="the worker's /metrics")
    webhooks_text = wait_until(lambda: scrape(webhooks_port, receiver), what="the webhook receiver's /metrics")

    # Then: every metric a panel reads is on the worker's /metrics, and the late failures on the receiver's
    dashboard = load_dashboard()
    assert unexported(dashboard, series_names(worker_text)) == {}
    read = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard)))
    assert SERVED_BY_WEBHOOKS <= read
    assert SERVED_BY_WEBHOOKS - series_names(webhooks_text) == set()
    # ...and the limit the send rate is drawn against is the worker's own, as it paces
    samples = {s.name: s.value for f in text_string_to_metric_families(worker_text) for s in f.samples}
    assert samples["buttoncast_rate_limit_per_second"] == RateLimit.parse("20/s").per_second == 20.0
    assert samples["buttoncast_rate_pace_per_second"] == pytest.approx(20.0)   # the headroom is the window's free end, not a lower pace


def test_every_metric_the_dashboard_reads_is_set_by_code_a_scraped_process_runs() -> None:
    """Defined is not enough: a metric nothing sets is a flat line. Each must be set (named as
    `metrics.CONSTANT`, or imported from worker.metrics) by a module outside the API, the console
    and the one-shot commands, whose processes serve no /metrics."""
    constants = {name: obj for name, obj in vars(metrics).items() if isinstance(obj, MetricWrapperBase)}
    series_of = {series: name for name, obj in constants.items() for family in obj.describe()
                 for series in _series_of(family.name, family.type)}
    setters: dict[str, list[str]] = {}
    for path in sorted([*REPO_ROOT.glob("worker/**/*.py"), *REPO_ROOT.glob("scheduler/**/*.py")]):
        where = path.relative_to(REPO_ROOT).as_posix()
        if where == "worker/metrics.py" or (where.startswith(UNSCRAPED) and where not in SERVING_MODULES):
            continue
        source = path.read_text(encoding="utf-8")
        named = set(re.findall(r"\bmetrics\.([A-Z][A-Z0-9_]*)\b", source))
        for imported in re.findall(r"from worker\.metrics import \(?([^)\n]*)", source):
            named |= {n.strip().split(" as ")[0] for n in imported.split(",")}
        for name in named & set(constants):
            setters.setdefault(name, []).append(where)
    read = set().union(*(metric_names(expr) for _, expr in dashboard_queries(load_dashboard())))
    unset = sorted(f"{series} ({series_of[series]})" for series in read
                   if series.startswith("buttoncast_") and series_of.get(series) not in setters)
    assert unset == [], f"read by the dashboard, set by no code a scraped process runs: {unset}"


def test_the_sweep_measures_the_queue_lag_the_dashboard_draws(empty_database: str) -> None:
    """buttoncast_queue_lag_seconds: the oldest due message's wait, of ad-hoc messages and running
    campaigns only; buttoncast_worker_lost_total: the sweep's own `unknown`s (no send task counts them)."""
    from scheduler.sweeper import sweep
    from tests.conftest import make_runtime
    from worker.models import Campaign, Message, utcnow

    now = utcnow().replace(microsecond=0)

    def ago(minutes: float) -> datetime:
        return now - timedelta(minutes=minutes)

    rt = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9"))
    phones = iter(range(966500000001, 966500001000))

    def message(campaign: Campaign | None, status: str, **columns: object) -> Message:
        return Message(campaign_id=campaign.id if campaign else None, phone_number_id="123456", phone=str(next(phones)), status=status,
                       content={"body_text": "Hi", "buttons": [{"id": "yes", "title": "Yes"}]}, **columns)

    def campaign(status: str, started: datetime) -> Campaign:
        return Campaign(name=status, phone_number_id="123456", template={}, status=status, started_at=started)

    # Given: campaign A started 10 min ago, its next pending message stored 20 min ago (A waits since
    # its start); B started an hour ago, its next pending message put back 15 min ago; a paused
    # campaign's message pending for 2 hours (not due); queued: one due since its not-before 5 min ago,
    # an ad-hoc one queued 2 min ago, one deferred 5 min ahead (not due); one `sending` for an hour
    a, b, paused = campaign("running", ago(10)), campaign("running", ago(60)), campaign("paused", ago(120))
    with rt.session_factory.begin() as session:
        session.add_all([a, b, paused])
        session.flush()
        session.add_all([
            message(a, "pending", created_at=ago(20), updated_at=ago(20)),
            message(b, "pending", created_at=ago(60), updated_at=ago(15)),
            message(paused, "pending", created_at=ago(120), updated_at=ago(120)),
            message(a, "queued", queued_at=ago(30), not_before=ago(5), updated_at=ago(5)),
            message(None, "queued", queued_at=ago(2), enqueued_at=ago(2), updated_at=ago(2)),
            message(b, "queued", queued_at=ago(60), not_before=ago(-5), updated_at=ago(1)),
            message(None, "sending", queued_at=ago(61), sending_at=ago(60), claim_token="t", updated_at=ago(60)),
        ])
    lost_before = REGISTRY.get_sample_value("buttoncast_worker_lost_total") or 0.0
    try:
        # When: the sweep runs
        sweep(rt, now)
    finally:
        rt.close()
    # Then: the oldest due message of each kind, and the sweep's own time and `unknown`
    lag = {status: REGISTRY.get_sample_value("buttoncast_queue_lag_seconds", {"status": status})
           for status in ("pending", "queued")}
    assert lag == {"pending": 15 * 60.0, "queued": 5 * 60.0}
    assert REGISTRY.get_sample_value("buttoncast_sweep_timestamp_seconds") == now.timestamp()
    assert REGISTRY.get_sample_value("buttoncast_worker_lost_total") == lost_before + 1


def test_the_dashboard_is_well_formed_and_reads_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert len(datasource) == 1 and datasource[0]["type"] == "prometheus"
    uid = datasource[0]["uid"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel["title"] and panel["type"] == "timeseries" and panel["targets"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), f"{where}: refIds {refs} repeat"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid} and target["expr"].strip(), where
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{where}: wider than the grid's 24 columns"
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{where} overlaps another panel"
        cells |= mine
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids), f"panel ids {ids} repeat"


def _volumes(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def _exposed(service: dict) -> set[int]:
    ports: set[int] = set()
    for item in service.get("expose", []):
        low, _, high = str(item).partition("-")
        ports |= set(range(int(low), int(high or low) + 1))
    return ports


def test_the_monitoring_profile_mounts_what_docs_provision() -> None:
    services = compose_services()
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), f"{name}: pin the image's version"
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), f"{name}: no authentication, loopback only"
        for target, source in _volumes(service).items():
            assert (REPO_ROOT / source).exists(), f"{name} mounts {source} at {target}: no such file"
    assert _volumes(services["prometheus"])["/etc/prometheus/prometheus.yml"] == "docs/prometheus/prometheus.yml"
    grafana = _volumes(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "docs/grafana/provisioning"
    dashboard_at = next(t for t, s in grafana.items() if s == "docs/grafana/buttoncast.json")
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))["providers"][0]
    assert provider["options"]["path"] == str(Path(dashboard_at).parent)
    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_compose_process_that_serves_metrics() -> None:
    """Every compose service running a command that serves /metrics listens on every interface
    (METRICS_HOST) and is scraped on every port it exposes for it; every scrape target is such a
    service and port. And only worker/run and webhooks start an endpoint at all."""
    callers = {p.relative_to(REPO_ROOT).as_posix() for p in [*REPO_ROOT.glob("worker/**/*.py"), *REPO_ROOT.glob("scheduler/**/*.py")]
               if re.search(r"\bserve_(?:worker_)?metrics\(", p.read_text(encoding="utf-8"))} - {"worker/metrics.py"}
    assert callers == SERVING_MODULES, "a new process serves /metrics: scrape it in docs/prometheus/prometheus.yml"
    targets: set[tuple[str, int]] = set()
    for job in yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            targets |= {(name, sd["port"]) for name in sd["names"]}
        for static in job.get("static_configs", []):
            targets |= {(host, int(port)) for host, port in (t.rsplit(":", 1) for t in static["targets"])}
    services = compose_services()
    first_port = {"METRICS_PORT": METRICS_PORT, "WEBHOOK_METRICS_PORT": WEBHOOK_METRICS_PORT}
    expected: set[tuple[str, int]] = set()
    for name, service in services.items():
        command = service.get("command") or []
        if not command or command[0] not in METRICS_COMMANDS:
            continue
        assert (service.get("environment") or {}).get("METRICS_HOST") == "0.0.0.0", \
            f"{name}: set METRICS_HOST: 0.0.0.0, or Prometheus cannot reach its loopback /metrics"
        ports = _exposed(service)
        first = first_port[METRICS_COMMANDS[command[0]]]
        assert ports and min(ports) == first and ports == set(range(first, first + len(ports))), \
            f"{name}: expose {first} (+1 per worker process), not {sorted(ports)}"
        expected |= {(name, port) for port in ports}
    assert targets == expected


def test_compose_accepts_the_monitoring_profile(tmp_path: Path) -> None:
    """`docker-compose --profile monitoring config` of a copy with .env from .env.example."""
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / ".env").write_text((REPO_ROOT / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    commands = [c for c in (["docker-compose"], ["docker", "compose"]) if shutil.which(c[0])]
    for command in commands:
        if subprocess.run([*command, "version"], capture_output=True, timeout=30).returncode == 0:
            break
    else:
        pytest.skip("neither docker-compose nor `docker compose` works here")
    done = subprocess.run([*command, "--profile", "monitoring", "config"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"prometheus", "grafana", "worker", "webhooks"} <= set(services)
