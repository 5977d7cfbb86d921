"""Faults: a full disk (5), SIGKILL under load (8), SIGHUP (11)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks import bench_crash
from benchmarks.common import REPO
from benchmarks.hostile import (
    MIB,
    Options,
    Row,
    agent_ids,
    attack,
    post,
    report,
)

# -- 5: a full disk --------------------------------------------------------------------------------------------------


def big_report(agent: str) -> dict:
    """A report whose stored rows take a few KB (process names that do not compress to nothing)."""
    names = [os.urandom(12).hex() for _ in range(150)]
    return report(agent, processes_info={"processes": [{"pid": 100 + i, "name": n} for i, n in enumerate(names)]})


@contextlib.contextmanager
def small_disk(size_mib: int):
    """A tmpfs of ``size_mib`` when run as root (yields its path and how to grow it), else None."""
    path = Path(tempfile.mkdtemp(prefix="bench-hostile-disk-"))
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def fill(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "wb") as filler:
        while True:
            filler.write(b"\xff" * 4096)
            filler.flush()


def serve_once(opts: Options, data_dir: str) -> subprocess.CompletedProcess:
    own = opts.repo / ".venv" / "bin" / "python"
    python = str(own) if opts.repo != REPO and own.exists() else sys.executable
    command = [python, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=opts.repo)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, "still running after 60 s", exc.stdout or "", exc.stderr or "")


def checkpoint_summary(checkpoint: dict | None) -> str:
    if not checkpoint:
        return "—"
    keys = ("checkpoints", "checkpoint_failures", "last_checkpoint_bytes", "available", "unavailable_reason")
    return ", ".join(f"{key} {checkpoint.get(key)}" for key in keys)


@attack("fulldisk", "5")
def attack_fulldisk(opts: Options) -> list[Row]:
    agents = opts.n(350)
    with small_disk(3) as disk:
        if disk is None:
            how = "no tmpfs (not root): `storage.max_file_size` 3 MiB"
            data_dir = tempfile.mkdtemp(prefix="bench-hostile-cap-")
            env = {"ORCHESTRATOR_STORAGE__MAX_FILE_SIZE": str(3 * MIB)}
        else:
            how, data_dir, env = "data dir on a 3 MiB tmpfs", str(disk / "data"), {}
        env["ORCHESTRATOR_STORAGE__CHECKPOINT_INTERVAL"] = "1s"
        reports, registrations, accepted, healths = Counter(), Counter(), [], Counter()
        server = opts.server(env, data_dir=data_dir)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for k in range(agents):
                agent = f"agent-{k}"
                registered = client.post("/api/v1/agents/register", json={"agent_id": agent, "hostname": f"host-{k}"})
                registrations[registered.status_code] += 1
                answer = post(client, big_report(agent))
                reports[answer.status_code] += 1
                if answer.status_code == 202:
                    accepted.append(agent)
                if k % 10 == 9:
                    healths[client.get("/health").json().get("status")] += 1
                    time.sleep(0.3)  # let checkpoints run in between, as probes reporting every few seconds do
            time.sleep(2.5)
            final = client.get("/health")
            checkpoint = client.get("/api/v1/query/stats").json().get("storage", {}).get("checkpoint")
        server.proc.terminate()
        exit_code = server.proc.wait(60)
        server.stop()
        start_full = None
        if disk is not None:
            fill(disk / "filler")
            start_full = serve_once(opts, data_dir + "-new")  # a new data dir: nothing to restore, all to write
            (disk / "filler").unlink()
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], capture_output=True)
        with opts.server(data_dir=data_dir) as again:
            kept = agent_ids(again.url)
    lost = len(set(accepted) - kept)
    rows = [
        Row(
            f"{agents} agents registering and reporting, {how}: what they got",
            "reports 202, registrations 201 throughout",
            f"reports {dict(reports)}, registrations {dict(registrations)}",
            "503 `storage_unavailable` + Retry-After until a checkpoint succeeds",
        ),
        Row(
            "… /health meanwhile and at the end",
            "`healthy` throughout",
            f"{dict(healths)}; at the end {final.status_code} {final.json().get('status')} "
            f"({final.json().get('reason', '')})",
            "the failed checkpoint turns /health 503",
        ),
        Row(
            "… SIGTERM, space freed, restart: agents answered 202 that are gone",
            "250 of 350",
            f"{lost} of {len(accepted)} (SIGTERM exit {exit_code}); /stats checkpoint: "
            f"{checkpoint_summary(checkpoint)}",
            "bounded checkpoint transactions (≤ 4 MiB / 200 agents)",
        ),
    ]
    if start_full is not None:
        lines = start_full.stderr.strip().splitlines()
        rows.append(
            Row(
                "start-up on the full disk (Low)",
                "exit 1, an 83-line traceback",
                f"exit {start_full.returncode}, {len(lines)} line(s): `{lines[-1] if lines else ''}`"[:300],
                "one line, exit 2",
            )
        )
    return rows


# -- 8: the crash window ---------------------------------------------------------------------------------------------


@attack("crash", "8")
def attack_crash(opts: Options) -> list[Row]:
    rounds = opts.n(10)
    rows = bench_crash.run(rounds, "2s", 100, seed=1, repo=opts.repo)
    oldest = max(row[3] for row in rows)
    reused = [row[0] for row in rows if row[6]]
    per_round = "; ".join(
        f"{r[0]}: {r[2]} lost, oldest {r[3]:.2f} s, seq {r[4]}→{r[5]}, last checkpoint {r[8]} ms" for r in rows
    )
    return [
        Row(
            f"SIGKILL under load (100 hosts, one connection posting), checkpoint_interval 2 s, {rounds} kills: "
            "oldest 202'd report lost",
            "4.1 s",
            f"{oldest:.2f} s",
            "checkpoints run start to start from the last successful one",
        ),
        Row(
            "… restarts whose seq was not ahead of what a client had seen",
            "4 of 10 (a client resuming `since=78` got diff 79 of the new history)",
            f"{len(reused)} of {rounds}" + (f" (rounds {reused})" if reused else ""),
            "seq reserved on disk before it is published",
        ),
        Row(
            "… per round (lost 202s, oldest, last seq seen → first seq after restart, the checkpoint before the kill)",
            "",
            per_round,
        ),
    ]


# -- 11: SIGHUP ------------------------------------------------------------------------------------------------------------


@attack("sighup", "11")
def attack_sighup(opts: Options) -> list[Row]:
    data_dir = tempfile.mkdtemp(prefix="bench-hostile-hup-")
    log = opts.logs / "sighup.log"
    server = opts.server(data_dir=data_dir, stderr=log)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for k in range(50):
            post(client, report(f"agent-{k}", host_info={"cpu_percent": 1.0}))
    server.wait_drained(60)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    alive = server.proc.poll() is None
    healthy = alive and httpx.get(server.url + "/health", timeout=10).status_code
    if alive:
        server.proc.terminate()
    code = server.proc.wait(60)
    server.stop()
    logged = [line for line in log.read_text(errors="replace").splitlines() if "sighup" in line.lower()]
    with opts.server(data_dir=data_dir) as again:
        kept = len(agent_ids(again.url) & {f"agent-{k}" for k in range(50)})
    return [
        Row(
            "SIGHUP to a server with 50 agents just reported",
            "killed at once, nothing logged or checkpointed",
            f"{'still serving (health ' + str(healthy) + ')' if alive else f'died (exit {code})'}; "
            f"{len(logged)} log line(s) naming it",
            "SIGHUP ignored and logged (`sighup_ignored`)",
        ),
        Row("… agents back after SIGTERM (or the death) and restart", "0 of 50", f"{kept} of 50"),
    ]
