"""RELIABILITY.md T9: a real ``ray start --head`` on 127.0.0.1 with token authentication.

submit → SUCCEEDED (and the run dir on disk), resubmitting an id → the same job, stop →
STOPPED, a job failing on the cluster → exit 4 with its own error, logs readable, an invalid
spec → exit 2 before any submission, a client without (or with a wrong) token → exit 3 saying
so. The head is started once for this module and always stopped.

:class:`LocalRayCluster` is also used by ``test_two_node.py``. It never runs ``ray stop``, which
ends every Ray process of the machine (other tests' clusters included): each process it starts
carries a marker in its environment, and only those processes are ended, by pid.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from distml.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
MARK = "DISTML_TEST_MARK"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds its Ray processes through /proc"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Ray nodes started with ``ray start`` for one test module: a head, and worker nodes.

    ``loopback_only`` keeps every address on 127.0.0.1 (Ray then refuses extra nodes); a
    multi-node cluster uses Ray's own choice, this machine's interface address.
    """

    def __init__(self, *, token: str | None = None, loopback_only: bool = True):
        self.base = tempfile.mkdtemp(prefix="dml", dir="/tmp")  # short: Unix socket paths
        self.mark = secrets.token_hex(8)
        self.token = token
        home = os.path.join(self.base, "home")
        os.makedirs(home)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "DISTML_")) and k not in ("PYTEST_CURRENT_TEST",)
        }
        env.update(
            {
                "HOME": home,
                MARK: self.mark,
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token" if token else "disabled",
                "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
                "OMP_NUM_THREADS": "1",
            }
        )
        if token:
            env["RAY_AUTH_TOKEN"] = token
        if loopback_only:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        self.env = env
        self.gcs_port = self.dashboard_port = None
        self.nodes = 0
        atexit.register(self.stop)

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for a client process of this cluster (a driver on this machine must
        resolve its own address as the nodes did: loopback)."""
        env = {"RAY_AUTH_TOKEN": self.token or ""}
        if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in self.env:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _ports(self) -> list[str]:
        args = []
        for flag in (
            "--node-manager-port",
            "--object-manager-port",
            "--metrics-export-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        ):
            args += [flag, str(free_port())]
        return args

    def _ray_start(self, args: list[str]) -> None:
        out = subprocess.run(
            [RAY, "start", "--disable-usage-stats", *args, *self._ports()],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed ({out.returncode}):\n{out.stderr[-3000:]}")

    def start_head(self, num_cpus: int = 2, resources: dict | None = None) -> "LocalRayCluster":
        for attempt in (1, 2):  # a free port can be taken by another test before Ray binds it
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            args = [
                "--head",
                "--port",
                str(self.gcs_port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--num-cpus",
                str(num_cpus),
                "--ray-client-server-port",
                str(free_port()),
                "--temp-dir",
                os.path.join(self.base, f"h{attempt}"),
            ]
            if self.env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
                args += ["--node-ip-address", "127.0.0.1"]
            if resources:
                args += ["--resources", json.dumps(resources)]
            try:
                self._ray_start(args)
                self.nodes = 1
                self.wait_ready()
                return self
            except RuntimeError:
                self.kill()
                if attempt == 2:
                    raise
        return self

    def add_worker(self, num_cpus: int = 1, resources: dict | None = None) -> None:
        self.nodes += 1
        # Retried once, as the head's start is: a port taken by another test before the raylet
        # binds it fails the start (seen once in a full suite: "The current node timed out
        # during startup").
        for attempt in (1, 2):
            temp = os.path.join(self.base, f"w{self.nodes}-{attempt}")
            args = ["--address", self.gcs, "--num-cpus", str(num_cpus), "--temp-dir", temp]
            if resources:
                args += ["--resources", json.dumps(resources)]
            try:
                self._ray_start(args)
                self.wait_ready()
                return
            except RuntimeError:
                self.kill(under=temp)  # that node's processes only: the head stays up
                if attempt == 2:
                    raise

    def get(self, path: str) -> dict:
        req = urllib.request.Request(
            self.url + path,
            headers=({"Authorization": f"Bearer {self.token}"} if self.token else {}),
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> list[dict]:
        data = self.get("/api/v0/nodes?limit=100&detail=false")
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until the Jobs API answers and every node started so far is alive."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                self.get("/api/version")
                if len(self.alive_nodes()) >= self.nodes:
                    return
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster did not come up in {timeout_s} s: {last}")

    def _ours(self, pid: str, under: str | None = None) -> bool:
        """Started for this cluster: it carries the marker in its environment, or (processes
        that rename themselves, ray::*, overwrite that memory) holds a file under our temp dir
        open (every Ray process logs into its session dir there). ``under``: one node's
        processes, those holding a file open under that node's temp dir."""
        try:
            if under is None:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if f"{MARK}={self.mark}".encode() in fh.read().split(b"\0"):
                        return True
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith((under or self.base) + os.sep):
                    return True
        except OSError:
            pass
        return False

    def pids(self, under: str | None = None) -> list[int]:
        """This cluster's processes (or one node's, see :meth:`_ours`), and their descendants
        (by pid, from /proc)."""
        me = os.getpid()
        children: dict[int, list[int]] = {}
        found = set()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
            if self._ours(d, under):
                found.add(int(d))
        stack = list(found)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in found and child != me:
                    found.add(child)
                    stack.append(child)
        return sorted(found)

    def stop(self) -> None:
        """End exactly this cluster's processes and remove its files."""
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def kill(self, under: str | None = None) -> None:
        """End exactly this cluster's processes (or one node's: :meth:`_ours`): SIGTERM, then
        SIGKILL, by pid."""
        pids = self.pids(under)
        for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self.pids(under)
            if not pids:
                break


@pytest.fixture(scope="module")
def head():
    cluster = LocalRayCluster(token=secrets.token_hex(16))
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()
        assert cluster.pids() == [], "processes of the test cluster survived stop()"


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distml", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def token_env(head, monkeypatch):
    """In-process CLI calls: the cluster's token, no address variables."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return {"RAY_AUTH_TOKEN": head.token}


def _json_main(capfd, *argv: str) -> tuple[int, dict]:
    capfd.readouterr()
    code = main(list(argv) + ["--json"])
    return code, json.loads(capfd.readouterr().out)


def _job_ids(capfd, head) -> list[str]:
    code, payload = _json_main(capfd, "jobs", "list", "--address", head.url, "--all")
    assert code == 0
    return [j["submission_id"] for j in payload["jobs"]]


def test_submit_wait_succeeds_resubmit_is_idempotent(head, token_env, tmp_path, capfd):
    runs = tmp_path / "runs"
    out = cli(
        "submit",
        "jobs/quickstart.yaml",
        "--address",
        head.url,
        "--wait",
        "--json",
        "--submission-id",
        "qs-1",
        "--output",
        str(runs),
        "--set",
        "model.num_boost_round=20",
        env=token_env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads(out.stdout)  # exactly one JSON object on stdout
    assert payload["status"] == "succeeded" and payload["job_status"] == "SUCCEEDED"
    assert payload["submission_id"] == payload["run_id"] == "qs-1"
    assert payload["address_source"] == "--address" and not payload["existing"]
    assert payload["run_dir"] == str(runs / "quickstart" / "qs-1")
    assert (runs / "quickstart" / "qs-1" / "_SUCCESS").is_file()
    assert payload["metrics"]["valid"]["roc_auc"] > 0.9
    assert "run succeeded" in out.stderr  # the job's log was streamed
    assert payload["entrypoint"] == "python -m distml run spec.yaml --run-id qs-1 --json"

    # the same id again: reported, not resubmitted (with --wait too: it is already finished)
    code, again = _json_main(
        capfd,
        "submit",
        "jobs/quickstart.yaml",
        "--address",
        head.url,
        "--submission-id",
        "qs-1",
        "--output",
        str(runs),
        "--wait",
    )
    assert code == 0 and again["existing"] and again["job_status"] == "SUCCEEDED"
    assert again["metrics"] == payload["metrics"]
    assert _job_ids(capfd, head).count("qs-1") == 1

    code, st = _json_main(capfd, "status", "qs-1", "--address", head.url)
    assert code == 0 and st["status"] == "succeeded" and st["name"] == "quickstart"
    assert st["kind"] == "xgboost" and st["run_dir"] == payload["run_dir"]
    capfd.readouterr()
    assert main(["logs", "qs-1", "--address", head.url]) == 0
    text = capfd.readouterr().out
    assert "Running entrypoint for job qs-1" in text and "run succeeded" in text
    assert main(["jobs", "list", "--address", head.url]) == 0
    table = capfd.readouterr().out
    assert "qs-1" in table and "SUCCEEDED" in table and "quickstart" in table


def test_invalid_spec_exits_2_before_submission(head, token_env, tmp_path, capfd):
    before = _job_ids(capfd, head)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nkind: xgboost\ndata: {source: builtin:iris, target: target, "
        "split: {valid: 1.5}}\n"
    )
    code, payload = _json_main(capfd, "submit", str(bad), "--address", head.url)
    assert code == 2 and "data.split.valid" in payload["error"]["message"]
    code, payload = _json_main(
        capfd,
        "submit",
        "jobs/quickstart.yaml",
        "--address",
        head.url,
        "--submission-id",
        "../escape",
    )
    assert code == 2 and "submission id" in payload["error"]["message"]
    assert _job_ids(capfd, head) == before


LONG_SPEC = """\
name: long
kind: xgboost
data: {source: "synthetic:classification?rows=20000&features=10&seed=1", target: target}
model: {num_boost_round: 1000000}
"""


def test_stop_a_running_job(head, token_env, tmp_path, capfd):
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG_SPEC)
    runs = tmp_path / "runs"
    code, sub = _json_main(
        capfd,
        "submit",
        str(spec),
        "--address",
        head.url,
        "--output",
        str(runs),
        "--submission-id",
        "long-1",
    )
    assert code == 0 and sub["job_status"] in ("PENDING", "RUNNING")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        code, st = _json_main(capfd, "status", "long-1", "--address", head.url)
        assert st["job_status"] in ("PENDING", "RUNNING"), st
        if st["job_status"] == "RUNNING" and (runs / "long" / "long-1").is_dir():
            break
        time.sleep(0.5)
    code, stopped = _json_main(capfd, "stop", "long-1", "--address", head.url)
    assert code == 0 and stopped["job_status"] == "STOPPED", stopped
    # --wait on a stopped job (found by its id): the driver's own "interrupted" (130) when it
    # reported it before Ray's grace period ended, else 4; the reason in the error
    code, again = _json_main(
        capfd,
        "submit",
        str(spec),
        "--address",
        head.url,
        "--output",
        str(runs),
        "--submission-id",
        "long-1",
        "--wait",
    )
    assert again["existing"] and again["status"] == "stopped"
    assert (code, again["job_exit_code"]) in ((130, 130), (4, None)), again
    assert again["error"]["exit_code"] == code and "STOPPED" in again["error"]["message"]
    assert not (runs / "long" / "long-1" / "_SUCCESS").exists()
    # stopping a finished job is a no-op that reports it
    code, st = _json_main(capfd, "stop", "long-1", "--address", head.url)
    assert code == 0 and st["job_status"] == "STOPPED"


def test_job_failing_on_the_cluster_exits_with_its_own_code(head, token_env, tmp_path):
    """Bad data inside the job: `submit --wait` exits 2 (do not retry); a fit that fails: 4;
    `status --wait` of the same job says the same."""
    spec = tmp_path / "missing.yaml"
    spec.write_text(
        f"name: missing-data\nkind: xgboost\n"
        f"data: {{source: '{tmp_path}/nowhere/*.parquet', target: y}}\n"
    )
    out = cli(
        "submit",
        str(spec),
        "--address",
        head.url,
        "--wait",
        "--json",
        "--submission-id",
        "fail-1",
        "--output",
        str(tmp_path / "runs"),
        env=token_env,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    payload = json.loads(out.stdout)
    assert payload["status"] == "failed" and payload["job_status"] == "FAILED"
    assert payload["exit_code"] == payload["job_exit_code"] == 2
    err = payload["error"]
    assert err["job_exit_code"] == err["exit_code"] == 2 and "no file matches" in err["message"]
    assert err["job_error"]["type"] == "DataError" and err["driver_exit_code"] == 2
    out = cli("status", "fail-1", "--address", head.url, "--wait", "--json", env=token_env)
    assert out.returncode == 2 and json.loads(out.stdout)["job_exit_code"] == 2

    fit = tmp_path / "fit.yaml"  # 3 classes with a binary objective: xgboost refuses to fit
    fit.write_text(
        "name: fit-fails\nkind: xgboost\n"
        "data: {source: builtin:iris, target: target}\n"
        "model: {num_boost_round: 2, params: {objective: 'binary:logistic'}}\n"
    )
    out = cli(
        "submit",
        str(fit),
        "--address",
        head.url,
        "--wait",
        "--json",
        "--submission-id",
        "fail-2",
        "--output",
        str(tmp_path / "runs"),
        env=token_env,
    )
    assert out.returncode == 4, out.stderr[-3000:]
    payload = json.loads(out.stdout)
    assert payload["exit_code"] == payload["job_exit_code"] == 4
    assert payload["error"]["job_error"]["type"] == "JobFailed"


def test_client_without_or_with_a_wrong_token_is_refused(head, tmp_path):
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    env = {"HOME": str(empty_home), "RAY_AUTH_TOKEN": "", "RAY_AUTH_MODE": "disabled"}
    t0 = time.monotonic()
    out = cli("jobs", "list", "--address", head.url, "--json", env=env)  # the cluster says 401
    assert out.returncode == 3, out.stderr[-2000:]
    msg = json.loads(out.stdout)["error"]["message"]
    assert "requires an authentication token and none was sent" in msg and "RAY_AUTH_TOKEN" in msg
    assert head.url in msg and "--address" in msg and "Traceback" not in out.stderr
    # with RAY_AUTH_MODE=token here, Ray's client refuses to send a request without a token
    out = cli("status", "qs-1", "--address", head.url, env={**env, "RAY_AUTH_MODE": "token"})
    assert out.returncode == 3
    assert "RAY_AUTH_MODE=token is set here but no authentication token was found" in out.stderr
    out = cli("status", "qs-1", "--address", head.url, env={**env, "RAY_AUTH_TOKEN": "wrong"})
    assert out.returncode == 3
    assert "rejected the authentication token (from RAY_AUTH_TOKEN): it is wrong" in out.stderr
    token_file = tmp_path / "token"
    token_file.write_text(head.token + "\n")
    out = cli(
        "jobs",
        "list",
        "--address",
        head.url,
        "--json",
        env={**env, "RAY_AUTH_TOKEN_PATH": str(token_file)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.monotonic() - t0 < 60


def test_cron_script_trains_then_scores(head, tmp_path):
    """examples/cron/nightly_train.sh against the cluster: exit codes and _SUCCESS as documented."""
    script = os.path.join(ROOT, "examples", "cron", "nightly_train.sh")
    env = {
        **os.environ,
        **head.client_env,
        "DISTML_ADDRESS": head.url,
        "DISTML_RUN_ID": "cron-1",
        "DISTML_OUTPUT": str(tmp_path / "runs"),
        "DISTML": os.path.join(os.path.dirname(sys.executable), "distml"),
        "DISTML_SCORE_INPUT": "builtin:breast_cancer",
        "DISTML_SCORE_OUTPUT": str(tmp_path / "scores"),
        "DISTML_SCORE_ADDRESS": head.gcs,
    }
    run = lambda *extra, **kw: subprocess.run(  # noqa: E731
        ["bash", script, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**env, **kw},
    )
    out = run("--set", "model.num_boost_round=10")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "quickstart" / "cron-1"
    assert out.stdout.strip() == str(run_dir) and (run_dir / "_SUCCESS").is_file()
    assert (tmp_path / "scores" / "cron-1" / "_SUCCESS").is_file()
    again = run(DISTML_SCORE_INPUT="")  # same day again: the finished job is reported
    assert again.returncode == 0 and "already exists" in again.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nkind: xgboost\ndata: {source: x.parquet, target: y, split: {valid: 3}}\n"
    )
    out = run(DISTML_SPEC=str(bad), DISTML_RUN_ID="cron-2")
    assert out.returncode == 2 and "not retrying: fix the input" in out.stderr
    out = run(DISTML_RUN_ID="cron-3", DISTML_ADDRESS=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 3 and "retry later" in out.stderr


def test_a_pandas_frame_submitted_with_the_job_trains_as_plain_xgboost(head, token_env, tmp_path):
    """``distml.submit(spec, data=df, test_data=df)``: the frames travel as parquet in the job's
    working dir and the cluster's run trains on them: the metrics of plain xgboost on the same
    rows, and the run records where it read them."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score
    from test_supervised import plain_xgboost

    import distml
    from distml.runtime.data import split_indices
    from distml.runtime.datasets import load_builtin
    from distml.spec import load_spec

    frame = load_builtin("breast_cancer")
    train, test = frame.iloc[:450].reset_index(drop=True), frame.iloc[450:]
    sub = distml.submit(
        os.path.join(ROOT, "jobs", "quickstart.yaml"),
        {"model.num_boost_round": 30, "data.split.test": 0},  # the test rows: test_data=
        address=head.url,
        submission_id="frame-1",
        output=tmp_path / "runs",
        wait=True,
        data=train,
        test_data=test,
    )
    assert sub.status == "SUCCEEDED", sub.message
    run_dir = tmp_path / "runs" / "quickstart" / "frame-1"
    assert sub.result["run_dir"] == str(run_dir) and (run_dir / "_SUCCESS").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    read = manifest["data"]["source"]  # the parquet that travelled, in the job's working dir
    assert read["source"].endswith("staging/data") and read["rows"] == 450
    assert json.loads(sub.metadata["distml_frames"])[0]["rows"] == 450

    spec = load_spec(
        os.path.join(ROOT, "jobs", "quickstart.yaml"),
        {"data.split.test": 0, "model.num_boost_round": 30},
    )
    X, y = train.drop(columns="target"), train["target"].to_numpy()
    parts = split_indices(y, spec.data.split_spec, classification=True)
    bst = plain_xgboost(spec, X, y, parts)
    rng = (0, bst.best_iteration + 1)
    metrics = sub.result["metrics"]
    for name, Xs, ys in (
        ("valid", X.iloc[parts["valid"]], y[parts["valid"]]),
        ("test", test.drop(columns="target"), test["target"].to_numpy()),
    ):
        p = bst.predict(xgb.DMatrix(Xs), iteration_range=rng)
        assert metrics[name]["roc_auc"] == pytest.approx(roc_auc_score(ys, p), abs=1e-12)
    assert metrics["best_iteration"] == bst.best_iteration
