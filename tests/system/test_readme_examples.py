"""Issue 25, the first hour: every example in README.md and docs/*.md runs as written after the
README's set-up. The README's own `send`, `campaign create` and `enqueue_message` examples exited 2 on
a fresh clone and its curl example's phone was refused; this test runs them all, so it stays true.

The rule (README.md says it too, under "Try it on your machine"):
1. A fenced block tagged `bash`, `sh` or `python` is an example, and is run, unless the line right
   before its opening fence is `<!-- not run: REASON -->` (a synopsis with [optional] parts or
   alternatives, a command that installs, starts a long-running server or needs Docker, a benchmark,
   a sketch). A block tagged anything else (`json`, `csv`, `text`, `promql`, none) is data or output
   and never runs; one right after `<!-- file: NAME -->` is written to NAME first, as a reader saves it.
2. Lines starting with `#` are comments or the output the command prints; they are not checked.
3. The blocks of one file run in order in one bash session (variables carry over, as in a reader's
   shell), in an empty directory holding the README's file blocks (and the file's own), after the
   README's set-up block (the one after `<!-- set-up -->`: a sandbox, `buttoncast run` and
   `buttoncast api` on ./buttoncast.db).
   The harness waits for the servers it starts to listen, as a reader would before typing on, and
   runs them on free ports: each port a block names (8080, 8099) is replaced by a free one.
4. Every command must succeed: bash runs with `set -euo pipefail`; `python` blocks run with the
   environment's python; a `curl` answered with a status of 400 or more fails, and when the comment
   after it (on its last line or the next line) starts with a status (`# 422 …`), the answer must
   be that status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>\S.*?) -->$")
FILE = re.compile(r"^<!-- file: (?P<name>[\w.-]+) -->$")
SETUP = "<!-- set-up -->"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
DOCUMENTED_PORTS = ("8080", "8099")    # the API's and the sandbox's in the examples; replaced by free ones
SERVED_PORTS = ("8099", "8080")        # what the set-up starts and the harness waits for
RUN_TIMEOUT_S = 900
STATUS_COMMENT = re.compile(r"#\s*(?P<statuses>\d{3}(?:\s*(?:,|or|;)\s*\d{3})*)\b")


@dataclass
class Block:
    path: Path
    line: int            # the opening fence's line, 1-based
    lang: str
    text: str
    marker: str          # the line before the fence

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def not_run(self) -> str | None:
        match = NOT_RUN.match(self.marker)
        return match["reason"] if match else None

    @property
    def file_name(self) -> str | None:
        match = FILE.match(self.marker)
        return match["name"] if match else None

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and self.not_run is None


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, its indentation (a block inside a list item) removed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, body, end = len(opening["indent"]), [], index + 1
        while end < len(lines) and lines[end].strip() != "```":
            body.append(lines[end][indent:] if lines[end][:indent].strip() == "" else lines[end])
            end += 1
        marker = lines[index - 1].strip() if index else ""
        found.append(Block(path, index + 1, opening["lang"], "\n".join(body), marker))
        index = end + 1
    return found


def setup_block() -> Block:
    readme = blocks_of(REPO_ROOT / "README.md")
    chosen = [b for b in readme if b.marker == SETUP]
    assert len(chosen) == 1, f"README.md must mark exactly one set-up block with {SETUP}; found {len(chosen)}"
    assert chosen[0].lang == "bash"
    return chosen[0]


# A curl that fails on an answer of 400 or more, or on one other than the status its comment names.
CURL_WRAPPER = r"""
curl() {
  local err rc status
  err=$(mktemp)
  rc=0
  command curl --write-out '%{stderr}@@HTTP %{http_code}\n' "$@" 2>"$err" || rc=$?
  grep -v '^@@HTTP ' "$err" >&2 || true
  status=$(grep '^@@HTTP ' "$err" | tail -n 1 | cut -d' ' -f2)
  rm -f "$err"
  [ "$rc" -eq 0 ] || { echo "EXAMPLE FAILED: curl exited $rc: curl $*" >&2; return "$rc"; }
  if [ -n "${BC_EXPECT:-}" ]; then
    case " $BC_EXPECT " in *" $status "*) return 0;; esac
    echo "EXAMPLE FAILED: HTTP $status, the example says $BC_EXPECT: curl $*" >&2; return 22
  fi
  if [ "${status:-0}" -ge 400 ]; then echo "EXAMPLE FAILED: HTTP $status: curl $*" >&2; return 22; fi
}
bc_wait_port() {
  for _ in $(seq 1 600); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "EXAMPLE FAILED: nothing listens on port $1 after 120 s" >&2; return 1
}
"""


def expect_statuses(text: str) -> str:
    """Prefix each curl command with BC_EXPECT when its comment names the status it answers."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not re.match(r"^\s*(\S+=\S*\s+)*curl\s", line) or "$(" in line.split("curl", 1)[0]:
            out.append(line)
            index += 1
            continue
        command = [line]
        while (command[-1].rstrip().endswith("\\") or _open_quote(command)) and index + 1 < len(lines):
            index += 1   # a continued line, or a single-quoted argument (a JSON body) still open
            command.append(lines[index])
        trailing = command[-1].split(" #", 1)[1] if " #" in command[-1] else ""
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        said = STATUS_COMMENT.match("#" + trailing.lstrip("#")) if trailing else None
        said = said or (STATUS_COMMENT.match(following) if following.startswith("#") else None)
        if said:
            statuses = " ".join(re.findall(r"\d{3}", said["statuses"]))
            command[0] = re.sub(r"^(\s*)", rf'\1BC_EXPECT="{statuses}" ', command[0], count=1)
        out.extend(command)
        index += 1
    return "\n".join(out)


def _open_quote(command: list[str]) -> bool:
    """A single-quoted argument is still open (its trailing comments left out of the count)."""
    return sum(re.sub(r"\s#[^'\"]*$", "", line).count("'") for line in command) % 2 == 1


def with_free_ports(text: str, ports: dict[str, str]) -> str:
    for documented, free in ports.items():
        text = re.sub(rf"\b{documented}\b", free, text)
    return text


def script_for(blocks: list[Block], ports: dict[str, str]) -> str:
    parts = ["set -euo pipefail", CURL_WRAPPER, f"# --- the set-up: {setup_block().where}",
             with_free_ports(setup_block().text, ports)]
    parts += [f"bc_wait_port {ports[p]}" for p in SERVED_PORTS]
    for block in blocks:
        text = with_free_ports(block.text, ports)
        parts.append(f'echo "@@ example {block.where}" >&2')
        if RUN_LANGS[block.lang] == "python":
            parts.append(f"python - <<'BUTTONCAST_EXAMPLE'\n{text}\nBUTTONCAST_EXAMPLE")
        else:
            parts.append(expect_statuses(text))
    parts.append('echo "@@ all examples ran" >&2')
    return "\n".join(parts) + "\n"


def example_env() -> dict[str, str]:
    """A reader's shell: the installed `buttoncast` and `python` first on PATH, no settings of ours."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWAL_", "CELERY_", "REDIS_", "DATABASE_", "HOOKS_", "METRICS_", "API_", "WEBHOOK_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["METRICS_PORT"] = "0"   # several examples' processes on one machine; not part of what is shown
    return env


def run_examples(doc: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    blocks = [b for b in blocks_of(doc) if b.runs and b.marker != SETUP]
    for block in [*blocks_of(REPO_ROOT / "README.md"), *blocks_of(doc)]:   # the README's files, then its own
        if block.file_name:
            (tmp_path / block.file_name).write_text(block.text + "\n", encoding="utf-8")
    ports = {p: str(free_port()) for p in DOCUMENTED_PORTS}
    script = tmp_path / "examples.sh"
    script.write_text(script_for(blocks, ports), encoding="utf-8")
    # Files, not pipes: the set-up's servers run on in the background and keep what they inherited.
    out_path, err_path = tmp_path / "examples.out", tmp_path / "examples.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=example_env(), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err.write(f"\n(timed out after {RUN_TIMEOUT_S} s)\n")
        finally:
            _stop_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_path.read_text(errors="replace"),
                                       err_path.read_text(errors="replace"))


def _stop_group(pgid: int) -> None:
    """The set-up's servers (sandbox, run, api) share the script's process group: end them."""
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_first_hour_every_not_run_block_says_why_and_every_file_block_is_data() -> None:
    # Given every fenced block of the README and docs/
    for doc in DOCS:
        for block in blocks_of(doc):
            # Then: a "not run" marker is on a block that would otherwise run, and says why
            if block.marker.startswith("<!-- not run"):
                assert block.not_run, f"{block.where}: write <!-- not run: REASON -->"
                assert block.lang in RUN_LANGS, f"{block.where}: only bash/sh/python blocks run; drop the marker"
            # ...and a file block is data, not a command
            if block.file_name:
                assert block.lang not in RUN_LANGS, f"{block.where}: a <!-- file: --> block is data (json, csv)"
    assert setup_block()


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.runs for b in blocks_of(d))],
                         ids=lambda d: str(d.relative_to(REPO_ROOT)))
def test_first_hour_readme_examples_run_as_written(doc: Path, tmp_path: Path) -> None:
    # Given: a fresh directory and the README's set-up (sandbox, `buttoncast run`, `buttoncast api`)
    # When: the file's examples run in order, as a reader types them
    done = run_examples(doc, tmp_path)
    # Then: every one succeeds
    ran = re.findall(r"^@@ example (\S+)$", done.stderr, re.M)
    failing = ran[-1] if ran else "the set-up"
    assert done.returncode == 0 and "@@ all examples ran" in done.stderr, (
        f"the example at {failing} failed (exit {done.returncode})\n--- stdout (end):\n{done.stdout[-3000:]}\n"
        f"--- stderr (end):\n{done.stderr[-6000:]}")


def test_first_hour_compose_publishes_the_ports_the_readme_uses(tmp_path: Path) -> None:
    """docker-compose.yml published the API on 8000 while the README's examples use 8080 (the webhook
    receiver's port there). `docker-compose config` of a copy with `.env` from `.env.example`."""
    for name in ("docker-compose.yml", ".env.example"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / ".env").write_text((REPO_ROOT / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    compose = next((c for c in (["docker-compose"], ["docker", "compose"]) if _works(c)), None)
    if compose is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    done = subprocess.run([*compose, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]

    def published(service: str) -> set[tuple[str, str]]:
        ports = services[service].get("ports", [])
        return {(str(p["published"]), str(p["target"])) if isinstance(p, dict) else tuple(p.rsplit(":", 2)[-2:])
                for p in ports}

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    api_port = re.search(r"curl -X POST http://127\.0\.0\.1:(\d+)/v1/messages", readme)[1]
    receiver_port = re.search(r"buttoncast webhooks --port (\d+)", readme)[1]
    assert published("api") == {(api_port, api_port)}
    assert published("webhooks") == {(receiver_port, receiver_port)}
    assert api_port != receiver_port


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run([*command, "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
