"""The files of deploy/ agree with the code they run (docs/cluster.md).

No cluster is needed: the manifests are parsed, and what they rely on (the
fields Kubeflow's training operator reads, the TF_CONFIG it writes, the
command's flags and recipe, the exit status of a preempted run, the data
service's address, what the image installs) is checked against the
pipeline's own parsers and constants.
"""

import json
import pathlib
import re
import shlex
import tomllib

import pytest
import yaml

from pipeline.cli import main
from pipeline.data import service
from pipeline.training import checkpoints
from pipeline.training import distribute

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The kubeflow.org/v1 TFJob of Kubeflow's training operator
# (pkg/apis/kubeflow.org/v1/tensorflow_types.go and common_types.go): its
# spec's fields, a replica's fields, the replica types, and the container
# name and port name whose port TF_CONFIG names.
TFJOB_SPEC_FIELDS = {"runPolicy", "successPolicy", "tfReplicaSpecs", "enableDynamicWorker"}
REPLICA_FIELDS = {"replicas", "template", "restartPolicy"}
REPLICA_TYPES = {"Chief", "Master", "Worker", "PS", "Evaluator"}
CONTAINER_NAME = "tensorflow"
PORT_NAME = "tfjob-port"


def operator_retries(status):
    """Whether the training operator recreates a pod of an `ExitCode` replica
    that exited with `status`, in every release: earlier ones retry only 130,
    137, 143 and 138 (its user-defined retryable status), later ones every
    status from 128 up (pkg/util/train/train_util.go)."""
    earlier = status in (130, 137, 138, 143)
    later = status >= 128
    return earlier and later


def _documents(name):
    with open(DEPLOY / name, encoding="utf-8") as file:
        return [document for document in yaml.safe_load_all(file) if document]


@pytest.fixture(scope="module")
def tfjob():
    (job,) = _documents("tfjob.yaml")
    return job


@pytest.fixture(scope="module")
def data_service():
    """{(kind, name): document} of deploy/data-service.yaml."""
    return {(document["kind"], document["metadata"]["name"]): document
            for document in _documents("data-service.yaml")}


def _pod_spec(replica_or_deployment):
    return replica_or_deployment["template"]["spec"]


def _trainer(tfjob):
    """The Worker replica and its `tensorflow` container."""
    replica = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    (container,) = [container for container in _pod_spec(replica)["containers"]
                    if container["name"] == CONTAINER_NAME]
    return replica, container


def _mounts(pod_spec, container):
    """{mount path: (claim name, read-only)} of the container's volumes."""
    claims = {volume["name"]: volume["persistentVolumeClaim"]
              for volume in pod_spec.get("volumes", ())}
    return {mount["mountPath"]: (claims[mount["name"]]["claimName"],
                                 mount.get("readOnly", False))
            for mount in container.get("volumeMounts", ())}


def _run_config(tfjob, monkeypatch):
    """The `RunConfig` the trainers' command makes, in the image's WORKDIR."""
    _, container = _trainer(tfjob)
    assert container["command"] == ["python", "-m", "pipeline.run"]
    monkeypatch.chdir(REPO)
    make_parser, _ = main._COMMANDS["run"]
    args = main._parse_run_args(make_parser(), container["args"])
    return args, main.run_config(args)


def test_the_tfjob_uses_the_operators_fields_and_defaults(tfjob):
    assert (tfjob["apiVersion"], tfjob["kind"]) == ("kubeflow.org/v1", "TFJob")
    # The operator refuses a name that is not a DNS-1035 label.
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", tfjob["metadata"]["name"])
    spec = tfjob["spec"]
    assert set(spec) <= TFJOB_SPEC_FIELDS
    assert set(spec["tfReplicaSpecs"]) == {"Worker"}
    replica, container = _trainer(tfjob)
    assert set(replica) <= REPLICA_FIELDS
    assert replica["replicas"] == 2 and replica["restartPolicy"] == "ExitCode"
    assert [(port["name"], port["containerPort"]) for port in container["ports"]] == [
        (PORT_NAME, 2222)]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _pod_spec(replica)["terminationGracePeriodSeconds"] == 120


def test_the_operators_tf_config_makes_worker_0_the_chief_and_gives_worker_1_its_own_dir(
        tfjob, monkeypatch):
    """TF_CONFIG as the operator writes it: replica types in lower case, one
    address per replica at the port named `tfjob-port`."""
    name = tfjob["metadata"]["name"]
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert set(replicas) <= REPLICA_TYPES
    cluster = {
        kind.lower(): [f"{name}-{kind.lower()}-{index}.default.svc:2222"
                       for index in range(spec["replicas"])]
        for kind, spec in replicas.items() if kind != "Evaluator"
    }
    _, config = _run_config(tfjob, monkeypatch)
    output_dir = config.train.output_dir
    directories = {}
    for kind, addresses in cluster.items():
        for index in range(len(addresses)):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": kind, "index": index},
                                    "environment": "cloud"})
            monkeypatch.setenv("TF_CONFIG", tf_config)
            task = distribute.cluster_task()
            directories[(task.type, task.index, task.chief)] = distribute.task_output_dir(
                output_dir, config.train.strategy)
    assert directories == {
        ("worker", 0, True): output_dir,
        ("worker", 1, False): f"{output_dir}/workers/worker-1",
    }


def test_the_trainers_command_parses_with_the_pipelines_own_parser(tfjob, monkeypatch):
    args, config = _run_config(tfjob, monkeypatch)
    assert (REPO / args.config).is_file()
    assert config.train.strategy == "multiworker"
    assert config.train.output_dir == "/shared/runs/alexnet-imagenet"
    assert config.train.checkpoint_every_steps == 2000
    assert config.model.variant == "paper_2gpu" and config.train.batch_size == 128
    # Everything the run reads and writes is on the shared volume, which
    # both pods mount read-write.
    replica, container = _trainer(tfjob)
    ((mount, (claim, read_only)),) = _mounts(_pod_spec(replica), container).items()
    assert claim == "alexnet-shared" and not read_only
    for path in (config.train.output_dir, config.data.ingest_dir, config.data.data_dir,
                 config.export.export_dir):
        assert path.startswith(mount + "/"), path


def test_a_preempted_run_exits_with_the_status_the_operator_retries(tfjob):
    status = checkpoints.PREEMPTED_EXIT_STATUS
    assert status == 138 and operator_retries(status)
    # A user error (a bad flag, a missing path) is not retried.
    assert not operator_retries(2)
    assert checkpoints.Preempted.exit_status == status
    # The manifest and the page that explain the restarts name the same status.
    for path in (DEPLOY / "tfjob.yaml", REPO / "docs" / "cluster.md"):
        assert f"exits {status}" in path.read_text(encoding="utf-8"), path


def test_the_data_service_is_where_the_trainers_and_its_workers_look(
        tfjob, data_service, monkeypatch):
    (service_document,) = [document for (kind, _), document in data_service.items()
                           if kind == "Service"]
    service_name = service_document["metadata"]["name"]
    (port,) = service_document["spec"]["ports"]
    _, config = _run_config(tfjob, monkeypatch)
    assert service.host_and_port(config.data.data_service) == (service_name, port["port"])

    dispatcher = data_service[("Deployment", "alexnet-data-service-dispatcher")]
    worker = data_service[("Deployment", "alexnet-data-service-worker")]
    for deployment in (dispatcher, worker):
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    # The Service sends to the dispatcher's port, and to the dispatcher only.
    assert service_document["spec"]["selector"] == (
        dispatcher["spec"]["template"]["metadata"]["labels"])
    assert dispatcher["spec"]["replicas"] == 1

    parser = service.make_parser()
    (dispatcher_container,) = _pod_spec(dispatcher["spec"])["containers"]
    command = dispatcher_container["command"]
    assert command[0] == "alexnet-data-service"
    dispatcher_args = parser.parse_args(command[1:])
    assert dispatcher_args.role == "dispatcher"
    assert dispatcher_args.port == port["targetPort"] == (
        dispatcher_container["ports"][0]["containerPort"])

    (worker_container,) = _pod_spec(worker["spec"])["containers"]
    command = worker_container["command"]
    assert command[0] == "alexnet-data-service"
    worker_args = parser.parse_args(command[1:])
    assert worker_args.role == "worker"
    assert worker_args.dispatcher == f"{service_name}:{port['port']}"
    assert worker_args.port == worker_container["ports"][0]["containerPort"]
    # Kubernetes expands $(POD_IP) from the container's environment.
    assert worker_args.worker_address == "$(POD_IP)"
    (pod_ip,) = [variable for variable in worker_container["env"]
                 if variable["name"] == "POD_IP"]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert worker["spec"]["replicas"] == 4
    assert worker_container["resources"]["requests"]["cpu"] == "8"


def test_the_data_service_workers_see_the_shards_where_the_trainers_do(tfjob, data_service):
    """The trainers send the shards' paths: the workers mount the same claim at
    the same place, read-only."""
    replica, container = _trainer(tfjob)
    trainer_mounts = _mounts(_pod_spec(replica), container)
    worker = data_service[("Deployment", "alexnet-data-service-worker")]["spec"]
    (worker_container,) = _pod_spec(worker)["containers"]
    assert _mounts(_pod_spec(worker), worker_container) == {
        path: (claim, True) for path, (claim, _) in trainer_mounts.items()}


def _dockerfile():
    """(instruction, arguments) of deploy/Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_the_image_installs_the_package_and_holds_what_the_commands_name(tfjob, data_service):
    instructions = _dockerfile()
    workdir = [arguments for instruction, arguments in instructions if instruction == "WORKDIR"]
    assert workdir == ["/app"]
    copied = set()
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, destination = shlex.split(arguments)
            if destination.endswith("/") or destination == ".":
                copied |= {pathlib.PurePath(source).name for source in sources}
            else:
                assert len(sources) == 1
                copied.add(destination)
    runs = [shlex.split(arguments) for instruction, arguments in instructions
            if instruction == "RUN"]
    assert any(words[:2] == ["pip", "install"] and "." in words[2:] for words in runs)
    # What `pip install .` builds from: pyproject.toml, its readme, its packages.
    with open(REPO / "pyproject.toml", "rb") as file:
        pyproject = tomllib.load(file)
    packages = {pattern.rstrip("*") for pattern in
                pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", pyproject["project"]["readme"], *packages} <= copied
    # The recipe the trainers name, relative to WORKDIR.
    _, container = _trainer(tfjob)
    recipe = container["args"][container["args"].index("--config") + 1]
    assert pathlib.PurePath(recipe).parts[0] in copied
    # The data service's command is one the package installs.
    assert pyproject["project"]["scripts"]["alexnet-data-service"] == "pipeline.cli:data_service"

    images = {container["image"]}
    for (kind, _), document in data_service.items():
        if kind == "Deployment":
            images |= {container["image"] for container in _pod_spec(document["spec"])[
                "containers"]}
    # One image (docs/cluster.md: the pushed name replaces it in every manifest).
    assert len(images) == 1
