"""Training as Kubeflow PyTorchJobs (training/kubeflow.py, `maata train submit|pipeline`).

* Every stage's job round-trips through the kubeflow-training SDK's own serialiser and
  deserialiser, its pod template validates against the Kubernetes schemas, and its command is a
  real `maata` command.
* The job runs here as the operator would run it: one process per pod (Master and Worker), each
  given exactly the variables the operator sets (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_*, the
  elastic rendezvous), running the job's own container command (torchrun -m maata.cli ...) on the
  LM smoke config on CPU. It reaches the same weights as one process with the same global batch.
* A Worker killed mid-run (its whole pod): the Master's collectives fail and its torchrun exits
  non-zero; the operator restarts both failed pods (restartPolicy OnFailure) with the same command
  and environment; they meet again at the rendezvous and resume from the stage's last checkpoint,
  ending at the same weights as the uninterrupted single process.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.kubeflow import STAGES, KubeflowConfig, build_job, from_dict, replica_env, to_dict, to_yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY, PER_RANK_BATCH = 16, 4, 2


def test_every_stage_round_trips_through_the_sdk() -> None:
    import kubernetes_validate
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob

    from maata.cli import build_parser

    cfg = KubeflowConfig(workers=3, nproc_per_node=8, gpus_per_node=8)
    for stage in STAGES:
        job = build_job(stage, cfg)
        data = to_dict(job)
        again = from_dict(yaml.safe_load(to_yaml(job)))
        assert isinstance(again, KubeflowOrgV1PyTorchJob) and again == job
        assert to_dict(again) == data
        spec = data["spec"]
        assert data["apiVersion"] == "kubeflow.org/v1" and data["kind"] == "PyTorchJob"
        assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
        assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
        assert spec["nprocPerNode"] == "8" and spec["elasticPolicy"]["nProcPerNode"] == 8
        assert spec["elasticPolicy"]["minReplicas"] == spec["elasticPolicy"]["maxReplicas"] == 4
        for replica in spec["pytorchReplicaSpecs"].values():
            template = replica["template"]
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": template}, "1.35.0", strict=True)
            pod = template["spec"]
            container = pod["containers"][0]
            assert container["name"] == "pytorch"
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
            assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            assert claims == {"maata-data", "maata-checkpoints"}
            command = container["command"]
            assert command[:3] == ["torchrun", "--module", "maata.cli"]
            args = build_parser().parse_args(command[3:])
            assert args.resume and args.out == f"/checkpoints/{cfg.runs[stage]}"
            if stage in ("dialogue", "voice"):
                assert args.init_from == f"/checkpoints/{cfg.runs[{'dialogue': 'pretrain', 'voice': 'dialogue'}[stage]]}"


def test_replica_env_is_the_operators() -> None:
    job = build_job("pretrain", KubeflowConfig(workers=2, nproc_per_node=4, gpus_per_node=4))
    master, worker = replica_env(job, "Master", 0), replica_env(job, "Worker", 1)
    assert master["WORLD_SIZE"] == worker["WORLD_SIZE"] == "12"  # 3 pods x 4 processes
    assert (master["RANK"], worker["RANK"]) == ("0", "2")
    assert master["MASTER_ADDR"] == "maata-pretrain-master-0" and worker["PET_NODE_RANK"] == "2"
    assert worker["PET_RDZV_ENDPOINT"] == "maata-pretrain-master-0:29400" and worker["PET_NNODES"] == "3:3"
    with pytest.raises(ValueError, match="no Worker replica 2"):
        replica_env(job, "Worker", 2)


def test_bad_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="one process per GPU"):
        KubeflowConfig(nproc_per_node=4, gpus_per_node=2)
    with pytest.raises(ValueError, match="stage must be one of"):
        build_job("finetune")
    from maata.cli import main

    assert main(["train", "pipeline", "--dry-run", "--stages", "voice,pretrain"]) == 2


def test_submit_without_a_cluster_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maata.cli import main

    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    assert main(["train", "submit", "--stage", "codec", "--kubeconfig", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no cluster to submit maata-codec" in err and "--dry-run" in err


def test_cli_dry_run_prints_the_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    from maata.cli import main

    assert main(["train", "pipeline", "--dry-run", "--workers", "2", "--gpus-per-node", "0", "--set", "steps=10"]) == 0
    jobs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [j["metadata"]["name"] for j in jobs] == [f"maata-{s}" for s in STAGES]
    for data in jobs:
        assert from_dict(data).spec.pytorch_replica_specs["Worker"].replicas == 2
        cmd = data["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
        assert cmd[-4:] == ["--device", "cpu", "--set", "steps=10"]
        assert "nodeSelector" not in data["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def test_pretrain_init_containers_encode_the_corpus_with_the_trained_codec(tmp_path: Path) -> None:
    """The pretrain job's Master init container encodes the corpus with the codec stage's model into
    the checkpoints volume (once: a restarted pod skips it); the Workers' wait for it to finish."""
    import shutil

    from tests.support.corpus import write_corpus
    from tests.support.models import TINY_FRAME

    from maata.checkpoint import save_model
    from maata.codec.model import Codec, load_preset
    from maata.data.shards import ShardReader, shard_paths

    cfg = KubeflowConfig(workers=1, gpus_per_node=0, data_mount=str(tmp_path / "data"),
                         checkpoints_mount=str(tmp_path / "checkpoints"),
                         data={**KubeflowConfig().data, "codec": "corpus/manifest.jsonl"})
    write_corpus(tmp_path / "data" / "corpus", n_train=3, n_valid=1)
    torch.manual_seed(0)
    preset = load_preset("default", env_prefix=None, frame=TINY_FRAME)
    (tmp_path / "checkpoints" / "codec").mkdir(parents=True)
    save_model(tmp_path / "checkpoints" / "codec" / "codec.safetensors", Codec(preset), preset, kind="codec")
    data = to_dict(build_job("pretrain", cfg))
    master, worker = (data["spec"]["pytorchReplicaSpecs"][r]["template"]["spec"]["initContainers"][0]["command"]
                      for r in ("Master", "Worker"))
    trainer = data["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    out = Path(trainer[trainer.index("--shards") + 1])
    assert out == tmp_path / "checkpoints" / "shards" / "pretrain"
    # `maata` in the pod is the image's console script; here, this tree's CLI under this interpreter
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "maata").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m maata.cli \"$@\"\n")
    (bindir / "maata").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    waiting = subprocess.Popen(worker, env=env)
    time.sleep(0.5)
    assert waiting.poll() is None, "the Worker waits while the shards are not complete"
    done = subprocess.run(master, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert waiting.wait(timeout=30) == 0
    records = [rec for split in ("train", "valid") for path in shard_paths(out, split) for rec in ShardReader(path)]
    assert len(records) == 4 and records[0].arrays["codes"].shape[0] == preset.quantizer.n_q
    stamp = (out / ".complete").stat().st_mtime_ns
    shutil.move(str(tmp_path / "checkpoints" / "codec"), str(tmp_path / "codec-gone"))
    again = subprocess.run(master, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, "a restarted Master finds the finished shards and does not redo them"
    assert (out / ".complete").stat().st_mtime_ns == stamp


# -- the job, run as the operator runs it --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_shards(root: Path, n_train: int = 8, n_valid: int = 2) -> None:
    """Records longer than the smoke crop (24 frames), so every crop has the same number of tokens and
    the loss of a global batch equals the mean of the ranks' losses."""
    from maata.data.shards import Record, write_shard

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid)):
        recs = [Record({"codes": rng.integers(0, 32, (8, int(rng.integers(30, 50)))).astype(np.int16)},
                       {"id": f"{split}{i}", "speaker": f"spk{i}"}) for i in range(n)]
        write_shard(root / split / "shard0.safetensors", recs)


def _config(tmp: Path, **extra: object) -> KubeflowConfig:
    sets = [f"steps={STEPS}", f"checkpoint_every={CHECKPOINT_EVERY}", f"eval_every={STEPS}", "log_every=4",
            "keep_last=8"]
    return KubeflowConfig(
        workers=1, nproc_per_node=1, gpus_per_node=0, threads=1, data_mount=str(tmp / "data"),
        checkpoints_mount=str(tmp / "checkpoints"), rdzv_port=_free_port(),
        configs={**KubeflowConfig().configs, "pretrain": "lm_pretrain_smoke"},
        data={**KubeflowConfig().data, "pretrain": "shards"},
        sets=[*sets, f"batch_size={PER_RANK_BATCH}"], encode_pretrain_shards=False, **extra)  # type: ignore[arg-type]


def _pod(job: object, replica: str, index: int, master_port: int) -> subprocess.Popen[str]:
    """One pod of ``job``: its container command with the operator's environment, torchrun as a module."""
    data = to_dict(job)
    container = data["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[0] == "torchrun"
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
           **replica_env(job, replica, index, master_addr="127.0.0.1", master_port=master_port),
           "PYTHONPATH": str(ROOT), "TORCHELASTIC_ERROR_FILE": ""}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *command[1:]], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _start_job(job: object, master_port: int) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """The Master pod, then (once its torchrun hosts the c10d rendezvous store, as master-0 does in the
    cluster, where only it matches the rendezvous host's name) the Worker pod."""
    master = _pod(job, "Master", 0, master_port)
    rdzv = int(to_dict(job)["spec"]["elasticPolicy"]["rdzvPort"])
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", rdzv)) == 0:
                break
        assert master.poll() is None and time.monotonic() < deadline, "the Master's rendezvous did not come up"
        time.sleep(0.05)
    return master, _pod(job, "Worker", 0, master_port)


def _kill_pod(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a pod's every process, as a node loss or a killed container does: torchrun starts its
    trainer processes in sessions of their own, so the whole tree is walked (via /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait(procs: list[subprocess.Popen[str]], timeout_s: float = 240) -> list[str]:
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for p in procs:
                _kill_pod(p)
            raise
        outs.append(out)
        assert proc.returncode == 0, out[-4000:]
    return outs


def _single_process(tmp: Path, cfg: KubeflowConfig) -> dict[str, torch.Tensor]:
    """The same stage in one process with the job's global batch (2 pods x PER_RANK_BATCH)."""
    from training.kubeflow import trainer_args
    from training.lm_commands import _train_lm
    from maata.cli import build_parser

    args = trainer_args("pretrain", cfg)
    args[args.index("--out") + 1] = str(tmp / "single")
    args += ["--set", f"batch_size={2 * PER_RANK_BATCH}"]
    _train_lm(build_parser().parse_args(args))
    return _weights(tmp / "single")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "lm.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"weights differ by up to {worst}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kubeflow")
    _write_shards(root / "data" / "shards")
    return root


def test_two_pods_equal_one_process_with_the_same_global_batch(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(shards / "data")
    cfg = _config(tmp_path)
    job = build_job("pretrain", cfg)
    port = _free_port()
    outs = _wait(list(_start_job(job, port)))
    run = tmp_path / "checkpoints" / "lm_pretrain"
    assert (run / "lm.safetensors").exists(), outs[0][-2000:]
    joined = "".join(outs)
    assert "rank 0/2 joined the gloo process group" in joined and "rank 1/2 joined" in joined, joined[-3000:]
    single = _single_process(tmp_path, cfg)
    _assert_same(_weights(run), single)


def test_a_killed_worker_resumes_from_the_checkpoint(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(shards / "data")
    cfg = _config(tmp_path)
    job = build_job("pretrain", cfg)
    port = _free_port()
    run = tmp_path / "checkpoints" / "lm_pretrain"
    master, worker = _start_job(job, port)
    # kill the Worker pod (its torchrun agent and trainer) once the first checkpoint is on the volume
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / f"step_{CHECKPOINT_EVERY:08d}").is_dir():
        assert time.monotonic() < deadline, "no checkpoint was written"
        assert master.poll() is None and worker.poll() is None, "the job ended before it could be interrupted"
        time.sleep(0.01)
    _kill_pod(worker)
    killed_at = max(int(p.name.split("_")[1]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert master.wait(timeout=120) != 0, "the Master fails when its peer is lost"
    # the operator restarts the failed pods with the same command and environment
    master, worker = _start_job(job, port)
    outs = _wait([master, worker])
    assert killed_at < STEPS, "the Worker was killed before the run finished"
    assert f"resumed from {run / 'checkpoints' / f'step_{killed_at:08d}'}" in outs[0], outs[0][-3000:]
    _assert_same(_weights(run), _single_process(tmp_path, cfg))
