"""What ``mypy --strict`` says of typed tasks: it runs on snippets written to a temp dir
(the test environment's mypy, against this checkout's skivi) and must accept the right calls
and reject, at their lines, the wrong ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.engines import REPO

HEADER = '''
import datetime as dt
import skivi

system = skivi.create_system({})
TASKS = skivi.Tasks()


@TASKS.task(queue_name="mail")
def send_email(to: str, subject: str = "") -> None: ...


@system.task(timeout=5)
async def resize(ctx: skivi.JobContext, path: str, width: int = 100) -> int:
    return width


@system.task
def keyed(*, n: int) -> str:
    return str(n)
'''

GOOD = '''
job: skivi.Job = send_email.defer(to="a@b.c")
send_email.defer("a@b.c", subject="x")
send_email.configure(priority=3, run_at=dt.datetime.now(dt.UTC)).defer(to="a")
resize.defer(path="p", width=3)
keyed.defer(n=3)
spec: skivi.JobSpec = send_email.spec(to="a")
jobs: list[skivi.Job] = send_email.defer_many([{"to": "a"}, send_email.spec(to="b")])
ran: None = send_email("direct")
other: skivi.System = skivi.create_system({}, TASKS)
mixed = skivi.create_system({}, {"send_email": send_email, "plain": lambda ctx: None})


async def main() -> int:
    await send_email.defer_async(to="a@b.c")
    return 0
'''

BAD = {
    'send_email.defer(to=1)': 'Argument "to" to "defer" of "TypedTask" has incompatible type '
                              '"int"; expected "str"',
    'send_email.defer()': 'Missing positional argument "to"',
    'send_email.configure(priority=1).defer(to=b"x")': 'incompatible type "bytes"',
    'resize.defer(path=1)': 'Argument "path" to "defer" of "TypedTask" has incompatible type',
    'keyed.defer(3)': 'Too many positional arguments for "defer"',
    'send_email.spec(subjectt="x")': 'Unexpected keyword argument "subjectt"',
    'n: str = resize.defer(path="p")': 'Incompatible types in assignment',
}


def _mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(HEADER) + body)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MYPYPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "--python-version", "3.11",
         str(snippet)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_mypy_strict_accepts_well_typed_calls_when_checking_typed_tasks(
        tmp_path: Path) -> None:
    done = _mypy(tmp_path, textwrap.dedent(GOOD))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_mypy_strict_rejects_each_ill_typed_call_when_checking_typed_tasks(
        tmp_path: Path) -> None:
    lines = list(BAD)
    first = len(textwrap.dedent(HEADER).splitlines()) + 1
    done = _mypy(tmp_path, "".join(line + "\n" for line in lines))
    assert done.returncode == 1, done.stdout + done.stderr
    errors: dict[int, str] = {}
    for m in re.finditer(r"snippet\.py:(\d+): error: (.*)", done.stdout):
        errors[int(m.group(1))] = errors.get(int(m.group(1)), "") + m.group(2)
    for offset, line in enumerate(lines):
        assert BAD[line] in errors.get(first + offset, ""), (line, done.stdout)
    assert set(errors) == {first + i for i in range(len(lines))}, done.stdout
