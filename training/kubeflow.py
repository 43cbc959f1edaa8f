"""Maata's training stages as Kubeflow PyTorchJobs (the training operator's ``kubeflow.org/v1`` kind).

    job = build_job("pretrain", KubeflowConfig(workers=3, nproc_per_node=8))
    print(to_yaml(job))                     # what `maata train submit --stage pretrain --dry-run` prints
    submit(job)                             # through the SDK's TrainingClient, to the kubeconfig's cluster

A job is one Master and ``workers`` Worker pods, each running ``nproc_per_node`` processes under
``torchrun`` (one per GPU), so WORLD_SIZE = (1 + workers) x nproc_per_node. Each pod runs the
stage's own trainer — ``maata train codec`` or ``maata train lm --stage ...`` — exactly as on one
machine: the trainers are torchrun-compatible (training/distributed.py reads the environment that
torchrun derives from the operator's PET_* variables). Every stage writes to its own run folder on
the checkpoints volume and always passes ``--resume``: a pod that is restarted (node lost, worker
killed, job resubmitted) continues from the stage's last checkpoint instead of starting over, and a
fresh run folder starts from step 0. Recovery is by pod restart: when a pod dies, the others'
collectives fail, their torchrun exits (``max_restarts`` 0: restarting processes in place cannot
re-form a group whose rendezvous or worker store lived in the lost pod), the operator restarts the
failed pods (restartPolicy OnFailure, up to ``backoff_limit``), they meet again at the c10d
rendezvous on the Master's service (the elastic policy: pods may come back on other nodes, with
other addresses, in any order) and every trainer resumes from the last checkpoint.

Volumes: a data PVC (corpus manifest, dialogue shards; read-only) and a checkpoints PVC shared by
all pods (ReadWriteMany). Stages chain through the checkpoints volume: the codec stage writes
``codec/codec.safetensors``; the pretrain job first encodes the corpus with it into
``shards/pretrain`` (an init container of the Master, ``maata data speech-shards``, marked complete
by a file the Workers' init containers wait for; a restarted pod finds it and skips the step), then
trains from scratch on those codes; dialogue starts from pretrain's ``lm.safetensors`` and voice
from dialogue's (``--init-from``). ``maata train pipeline`` submits them in order and waits for each
to succeed. The dialogue shards (synthesised two-channel dialogues, ``maata data dialogues --codec``)
need the speech synthesisers and are made beforehand onto the data volume.

:func:`replica_env` is the environment the operator gives one replica's container; running a job's
replicas locally with it reproduces what the pods do (the tests do exactly that on CPU).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maata import config as cfglib

ENV_PREFIX = "MAATA_KUBEFLOW__"
STAGES = ("codec", "pretrain", "dialogue", "voice")
CONTAINER = "pytorch"  # the container name the training operator configures
PREVIOUS = {"dialogue": "pretrain", "voice": "dialogue"}  # --init-from: the previous stage's run folder


@dataclass(frozen=True)
class KubeflowConfig:
    """Where and how the PyTorchJobs run (YAML via ``--config``, then ``MAATA_KUBEFLOW__*`` variables)."""

    namespace: str = "maata"
    name_prefix: str = "maata"  # jobs are named <prefix>-<stage>
    image: str = "registry.example.org/maata/maata-gpu:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    workers: int = 1  # Worker pods besides the Master
    nproc_per_node: int = 1  # processes (GPUs) per pod
    gpus_per_node: int = 1  # nvidia.com/gpu per pod (0: CPU training, gloo)
    cpu: str = "8"
    memory: str = "32Gi"
    shm: str = "8Gi"  # /dev/shm for data-loader workers
    threads: int = 0  # torch threads per process (0: the config's)
    data_pvc: str = "maata-data"
    data_mount: str = "/data"
    checkpoints_pvc: str = "maata-checkpoints"
    checkpoints_mount: str = "/checkpoints"
    elastic: bool = True  # c10d rendezvous + restarts of the surviving processes
    min_nodes: int = 0  # elastic lower bound on pods (0: all of them)
    max_restarts: int = 0  # torchrun restarts in place; 0: a failure restarts the pods (see above)
    rdzv_port: int = 29400
    backoff_limit: int = 6  # pod restarts before the job fails
    ttl_seconds_after_finished: int = 86400
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    # per stage: training config name (training/configs), data path on the data volume, run folder
    configs: dict[str, str] = field(default_factory=lambda: {
        "codec": "codec_default", "pretrain": "lm_pretrain", "dialogue": "lm_dialogue", "voice": "lm_voice"})
    data: dict[str, str] = field(default_factory=lambda: {
        "codec": "corpus/manifest.jsonl", "pretrain": "shards/pretrain", "dialogue": "shards/dialogue",
        "voice": "shards/dialogue"})
    runs: dict[str, str] = field(default_factory=lambda: {
        "codec": "codec", "pretrain": "lm_pretrain", "dialogue": "lm_dialogue", "voice": "lm_voice"})
    sets: list[str] = field(default_factory=list)  # extra `--set PATH=VALUE` for the trainer (every stage)
    # pretrain: encode data["codec"]'s corpus with the codec stage's model first (False: use data["pretrain"])
    encode_pretrain_shards: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"kubeflow workers must be >= 0, got {self.workers}")
        if self.nproc_per_node < 1:
            raise ValueError(f"kubeflow nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.gpus_per_node < 0 or (self.gpus_per_node and self.gpus_per_node < self.nproc_per_node):
            raise ValueError(f"kubeflow gpus_per_node ({self.gpus_per_node}) must be 0 (CPU) or >= nproc_per_node "
                             f"({self.nproc_per_node}): one process per GPU")
        if not 0 <= self.min_nodes <= self.workers + 1:
            raise ValueError(f"kubeflow min_nodes must be in [0, {self.workers + 1}] (the job's pods), got "
                             f"{self.min_nodes}")
        for name in ("configs", "data", "runs"):
            missing = set(STAGES) - set(getattr(self, name))
            if missing:
                raise ValueError(f"kubeflow {name} lacks stages {sorted(missing)}")
        for item in self.sets:
            if "=" not in item:
                raise ValueError(f"kubeflow sets entries are PATH=VALUE, got {item!r}")

    @property
    def nodes(self) -> int:
        return 1 + self.workers

    def run_dir(self, stage: str) -> str:
        return f"{self.checkpoints_mount}/{self.runs[stage]}"

    def data_path(self, stage: str) -> str:
        if stage == "pretrain" and self.encode_pretrain_shards:
            return f"{self.checkpoints_mount}/shards/pretrain"
        return f"{self.data_mount}/{self.data[stage]}"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> KubeflowConfig:
    return cfglib.load(KubeflowConfig, path, env_prefix=ENV_PREFIX, overrides=overrides or None, environ=environ)


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def trainer_args(stage: str, cfg: KubeflowConfig) -> list[str]:
    """The ``maata`` arguments of the stage's trainer (what follows ``torchrun -m maata.cli``)."""
    _check_stage(stage)
    data = cfg.data_path(stage)
    if stage == "codec":
        args = ["train", "codec", "--config", cfg.configs[stage], "--manifest", data]
    else:
        args = ["train", "lm", "--stage", stage, "--config", cfg.configs[stage], "--shards", data]
        if stage in PREVIOUS:
            args += ["--init-from", cfg.run_dir(PREVIOUS[stage])]
    args += ["--out", cfg.run_dir(stage), "--resume"]
    if cfg.gpus_per_node == 0:
        args += ["--device", "cpu"]
    if cfg.threads:
        args += ["--threads", str(cfg.threads)]
    for item in cfg.sets:
        args += ["--set", item]
    return args


def command(stage: str, cfg: KubeflowConfig) -> list[str]:
    """The container command: torchrun (its node count, rendezvous and ranks come from the operator's
    PET_* variables) running the stage's trainer module."""
    return ["torchrun", "--module", "maata.cli", *trainer_args(stage, cfg)]


SHARDS_DONE = ".complete"  # written after the shards, so a half-written folder is never trained on


def shard_steps(cfg: KubeflowConfig) -> tuple[list[str], list[str]]:
    """The pretrain job's init commands: the Master's (encode the corpus with the trained codec,
    unless a previous run of the pod finished it) and the Workers' (wait until it is finished)."""
    out = cfg.data_path("pretrain")
    encode = shlex.join(["maata", "data", "speech-shards", "--manifest", f"{cfg.data_mount}/{cfg.data['codec']}",
                         "--codec", f"{cfg.run_dir('codec')}/codec.safetensors", "--out", out, "--overwrite"])
    done = shlex.quote(f"{out}/{SHARDS_DONE}")
    master = ["/bin/sh", "-c", f"test -e {done} || {{ {encode} && touch {done}; }}"]
    worker = ["/bin/sh", "-c", f"until test -e {done}; do sleep 10; done"]
    return master, worker


def job_name(stage: str, cfg: KubeflowConfig) -> str:
    return f"{cfg.name_prefix}-{stage}"


def build_job(stage: str, cfg: KubeflowConfig | None = None, name: str | None = None) -> Any:
    """The PyTorchJob of ``stage`` as the kubeflow-training SDK's model (``KubeflowOrgV1PyTorchJob``)."""
    from kubeflow.training import models as m
    from kubernetes import client as k

    cfg = cfg or KubeflowConfig()
    _check_stage(stage)
    name = name or job_name(stage, cfg)
    labels = {"app.kubernetes.io/part-of": "maata", "app.kubernetes.io/component": "training",
              "maata.io/stage": stage}
    limits = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus_per_node:
        limits["nvidia.com/gpu"] = str(cfg.gpus_per_node)
    env = [k.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
           k.V1EnvVar(name="OMP_NUM_THREADS", value=str(cfg.threads or 1))]
    container = k.V1Container(
        name=CONTAINER, image=cfg.image, image_pull_policy=cfg.image_pull_policy, command=command(stage, cfg),
        env=env, resources=k.V1ResourceRequirements(requests=dict(limits), limits=dict(limits)),
        ports=[k.V1ContainerPort(name="pytorchjob-port", container_port=23456)],
        volume_mounts=[k.V1VolumeMount(name="data", mount_path=cfg.data_mount, read_only=True),
                       k.V1VolumeMount(name="checkpoints", mount_path=cfg.checkpoints_mount),
                       k.V1VolumeMount(name="shm", mount_path="/dev/shm")],
        security_context=k.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True,
                                             run_as_user=10001, run_as_group=10001))
    volumes = [
        k.V1Volume(name="data", persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
            claim_name=cfg.data_pvc, read_only=True)),
        k.V1Volume(name="checkpoints", persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
            claim_name=cfg.checkpoints_pvc)),
        k.V1Volume(name="shm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=cfg.shm)),
    ]
    pod = k.V1PodSpec(containers=[container], volumes=volumes,
                      security_context=k.V1PodSecurityContext(fs_group=10001),
                      node_selector=dict(cfg.node_selector) if cfg.gpus_per_node else None,
                      tolerations=[k.V1Toleration(**t) for t in cfg.tolerations] if cfg.gpus_per_node else None)
    templates = {}
    for replica in ("Master", "Worker"):
        spec_ = pod
        if stage == "pretrain" and cfg.encode_pretrain_shards:
            init = shard_steps(cfg)[0 if replica == "Master" else 1]
            spec_ = copy.deepcopy(pod)
            spec_.init_containers = [k.V1Container(
                name="shards" if replica == "Master" else "wait-for-shards", image=cfg.image,
                image_pull_policy=cfg.image_pull_policy, command=init,
                resources=k.V1ResourceRequirements(requests={"cpu": cfg.cpu, "memory": cfg.memory},
                                                   limits={"cpu": cfg.cpu, "memory": cfg.memory}),
                volume_mounts=container.volume_mounts, security_context=container.security_context)]
        templates[replica] = k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=labels), spec=spec_)
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure",
                                                     template=templates["Master"])}
    if cfg.workers:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=cfg.workers, restart_policy="OnFailure",
                                                        template=templates["Worker"])
    elastic = None
    if cfg.elastic:
        elastic = m.KubeflowOrgV1ElasticPolicy(
            min_replicas=cfg.min_nodes or cfg.nodes, max_replicas=cfg.nodes, max_restarts=cfg.max_restarts,
            rdzv_backend="c10d", rdzv_host=f"{name}-master-0", rdzv_port=cfg.rdzv_port, rdzv_id=name,
            n_proc_per_node=cfg.nproc_per_node)
    spec = m.KubeflowOrgV1PyTorchJobSpec(
        pytorch_replica_specs=replicas, nproc_per_node=str(cfg.nproc_per_node), elastic_policy=elastic,
        run_policy=m.KubeflowOrgV1RunPolicy(clean_pod_policy="Running", backoff_limit=cfg.backoff_limit,
                                            ttl_seconds_after_finished=cfg.ttl_seconds_after_finished))
    return m.KubeflowOrgV1PyTorchJob(api_version="kubeflow.org/v1", kind="PyTorchJob",
                                     metadata=k.V1ObjectMeta(name=name, namespace=cfg.namespace, labels=labels),
                                     spec=spec)


def to_dict(job: Any) -> dict[str, Any]:
    """The job as the API server's JSON (camelCase), by the SDK's own serialiser."""
    from kubeflow.training.api_client import ApiClient

    return ApiClient().sanitize_for_serialization(job)


def from_dict(data: Mapping[str, Any]) -> Any:
    """A PyTorchJob from its JSON, by the SDK's own deserialiser (as TrainingClient.get_job reads one)."""
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    return ApiClient().deserialize(FakeResponse(dict(data)), "KubeflowOrgV1PyTorchJob")


def to_yaml(job: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(job), sort_keys=False)


def replica_env(job: Any, replica_type: str, index: int = 0, *, master_addr: str | None = None,
                master_port: int = 23456) -> dict[str, str]:
    """The variables the training operator sets in one replica's ``pytorch`` container: the static
    group (MASTER_ADDR/PORT, WORLD_SIZE = pods x nprocPerNode, RANK = the pod's node rank) and
    torchrun's PET_* (nodes, processes per node, node rank, master; with an elastic policy the c10d
    rendezvous endpoint, id, node range and restarts). ``master_addr``: the Master's address
    (default: its Service name, ``<job>-master-0``)."""
    data = to_dict(job)
    spec = data["spec"]
    name = data["metadata"]["name"]
    replicas = spec["pytorchReplicaSpecs"]
    nodes = sum(r.get("replicas", 1) for r in replicas.values())
    nproc = int(spec.get("nprocPerNode", "1"))
    if replica_type not in replicas or not 0 <= index < replicas[replica_type].get("replicas", 1):
        raise ValueError(f"{name} has no {replica_type} replica {index}")
    rank = 0 if replica_type == "Master" else 1 + index
    addr = master_addr or f"{name}-master-0"
    env = {"MASTER_ADDR": addr, "MASTER_PORT": str(master_port), "WORLD_SIZE": str(nodes * nproc),
           "RANK": str(rank), "PET_MASTER_ADDR": addr, "PET_MASTER_PORT": str(master_port),
           "PET_NNODES": str(nodes), "PET_NODE_RANK": str(rank), "PET_NPROC_PER_NODE": str(nproc),
           "PYTHONUNBUFFERED": "1"}
    elastic = spec.get("elasticPolicy")
    if elastic:
        host = master_addr or elastic.get("rdzvHost") or addr
        env.update({"PET_RDZV_BACKEND": elastic.get("rdzvBackend", "c10d"),
                    "PET_RDZV_ENDPOINT": f"{host}:{elastic.get('rdzvPort', 29400)}",
                    "PET_RDZV_ID": elastic.get("rdzvId", name),
                    "PET_NNODES": f"{elastic.get('minReplicas', nodes)}:{elastic.get('maxReplicas', nodes)}",
                    "PET_MAX_RESTARTS": str(elastic.get("maxRestarts", 3))})
    return env


def submit(job: Any, *, wait: bool = False, timeout_s: int = 7 * 86400, kubeconfig: str | None = None) -> Any:
    """Create ``job`` on the cluster of the kubeconfig (``TrainingClient``); with ``wait``, block until
    it succeeds (raises when it fails)."""
    from kubeflow.training import TrainingClient
    from kubernetes.config.config_exception import ConfigException

    data = to_dict(job)
    namespace, name = data["metadata"]["namespace"], data["metadata"]["name"]
    try:
        client = TrainingClient(config_file=kubeconfig, namespace=namespace, job_kind="PyTorchJob")
    except ConfigException as err:
        raise ValueError(f"no cluster to submit {name} to ({err}): point --kubeconfig (or KUBECONFIG) at one, or "
                         "pass --dry-run to print the job") from err
    try:
        client.create_job(job=job, namespace=namespace)
    except (RuntimeError, TimeoutError) as err:  # the SDK wraps the API server's refusal
        raise ValueError(f"the cluster refused {name} in namespace {namespace}: {err} (is the Kubeflow training "
                         "operator installed, and is there no job of that name already?)") from err
    if wait:
        return client.wait_for_job_conditions(name, namespace=namespace, job_kind="PyTorchJob",
                                              wait_timeout=timeout_s, polling_interval=30)
    return None


def describe(job: Any) -> str:
    """One line per job: its name, pods x processes, and the trainer command."""
    data = to_dict(job)
    spec = data["spec"]
    nodes = sum(r.get("replicas", 1) for r in spec["pytorchReplicaSpecs"].values())
    cmd = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    return f"{data['metadata']['name']}: {nodes} pods x {spec['nprocPerNode']} processes: {shlex.join(cmd)}"


__all__ = ["KubeflowConfig", "STAGES", "build_job", "command", "describe", "from_dict", "load_config",
           "replica_env", "submit", "to_dict", "to_yaml", "trainer_args"]
