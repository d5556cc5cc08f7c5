"""The Helm chart in helm/reconciler: it lints (also --strict), renders with the default
values and with the values files in helm/reconciler/ci/, every rendered manifest is valid
for Kubernetes (strict schema validation with kubernetes-validate), and it runs what a
user expects: one controller with its state on a volume, or several sharing a PostgreSQL
state (SPEC §11), probes, a Service on 8430, a non-root pod, and the secrets where the
controller's flags say they are; the real CLI accepts the arguments the chart renders.

helm comes from scripts/fetch-helm (cached in .cache/helm; set HELM to use another);
these tests skip only when it cannot be downloaded.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "reconciler"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXISTING = CHART / "ci" / "existing-secrets-values.yaml"
INLINE = CHART / "ci" / "inline-secrets-values.yaml"
POSTGRES = CHART / "ci" / "postgresql-values.yaml"

PORT = 8430
STATE_DIR = "/var/lib/reconciler"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]

Doc = dict[str, Any]
Render = Callable[..., list[Doc]]


# --- helm ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm with its own cache/config/data folders: nothing of the user's is read."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="session")
def helm() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    done = subprocess.run(
        [str(ROOT / "scripts" / "fetch-helm")], capture_output=True, text=True, timeout=600
    )
    if done.returncode in (2, 3):  # unsupported platform, or the download failed
        pytest.skip(f"no helm binary: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def run_helm(helm: str, env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="session")
def render(helm: str, helm_env: dict[str, str]) -> Render:
    cache: dict[tuple[Any, ...], list[Doc]] = {}

    def render(*values: Path, sets: tuple[str, ...] = ()) -> list[Doc]:
        key = (values, sets)
        if key not in cache:
            args: list[str | Path] = ["template", "rel", CHART, "--namespace", "ops"]
            for file in values:
                args += ["--values", file]
            for item in sets:
                args += ["--set", item]
            done = run_helm(helm, helm_env, *args)
            assert done.returncode == 0, done.stderr
            cache[key] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[key]

    return render


def test_helm_version(helm: str, helm_env: dict[str, str]) -> None:
    done = run_helm(helm, helm_env, "version", "--short")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("v3."), done.stdout


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_lint(helm: str, helm_env: dict[str, str], strict: bool, values: Path | None) -> None:
    args: list[str | Path] = ["lint", CHART]
    if strict:
        args.append("--strict")
    if values:
        args += ["--values", values]
    done = run_helm(helm, helm_env, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


# --- the rendered manifests are valid Kubernetes -------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_manifests_validate(render: Render, values: Path | None, kube_version: str) -> None:
    docs = render(values) if values else render()
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(map(str, e.path))
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")


def test_the_check_above_catches_a_mistake(render: Render) -> None:
    sts = statefulset(render())
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)


# --- what a user cares about ---------------------------------------------------------


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def statefulset(docs: list[Doc]) -> Doc:
    (sts,) = of_kind(docs, "StatefulSet")
    return sts


def workload(docs: list[Doc]) -> Doc:
    """The controller's StatefulSet or Deployment: there is exactly one."""
    (only,) = of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment")
    return only


def pod_spec(docs: list[Doc]) -> Doc:
    spec: Doc = workload(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = pod_spec(docs)["containers"]
    (only,) = containers
    return only


def flag(docs: list[Doc], name: str) -> str | None:
    """The value after `name` in the container's args, None when the flag is absent."""
    args = container(docs)["args"]
    return args[args.index(name) + 1] if name in args else None


def file_source(docs: list[Doc], path: str) -> tuple[str, str, str, int | None]:
    """Where the file at `path` in the container comes from: (kind, name, key, mode)."""
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container(docs)["volumeMounts"]:
        folder = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).parent != folder:
            continue
        volume = volumes[mount["name"]]
        for kind, name_key in (("secret", "secretName"), ("configMap", "name")):
            if kind in volume:
                source = volume[kind]
                for item in source.get("items", []):
                    if str(folder / item["path"]) == path:
                        mode = item.get("mode", source.get("defaultMode"))
                        return kind, source[name_key], item["key"], mode
    raise AssertionError(f"no volume provides {path}")


def test_one_statefulset_with_one_replica(render: Render) -> None:
    for docs in (render(), render(EXISTING), render(INLINE)):
        assert len(of_kind(docs, "StatefulSet")) == 1
        assert not of_kind(docs, "Deployment")
        assert statefulset(docs)["spec"]["replicas"] == 1


def test_replicas_is_not_a_value(render: Render) -> None:
    assert statefulset(render(sets=("replicas=3",)))["spec"]["replicas"] == 1


def test_more_replicas_without_a_shared_state_are_refused(
    helm: str, helm_env: dict[str, str]
) -> None:
    """Two controllers on one SQLite volume cannot work: the chart says what to set."""
    for values in ([], [EXISTING], [INLINE]):
        args: list[str | Path] = ["template", "rel", CHART, "--set", "replicaCount=3"]
        args += [item for file in values for item in ("--values", file)]
        done = run_helm(helm, helm_env, *args)
        assert done.returncode == 1
        assert "replicaCount is 3" in done.stderr, done.stderr
        assert "set state.url (or state.existingSecret) to a PostgreSQL state" in done.stderr
    done = run_helm(helm, helm_env, "template", "rel", CHART, "--set", "replicaCount=0")
    assert done.returncode == 1 and "run at least 1 controller" in done.stderr, done.stderr
    done = run_helm(helm, helm_env, "template", "rel", CHART, "--set", "state.url=/data/state.db")
    assert done.returncode == 1 and "state.url must be a postgresql:// URL" in done.stderr


def test_state_on_a_volume_claim_template(render: Render) -> None:
    docs = render(EXISTING)
    (claim,) = statefulset(docs)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == STATE_DIR
    assert flag(docs, "--state") == f"{STATE_DIR}/state.db"
    # A claim is a volume of its own: no pod volume may shadow it.
    assert claim["metadata"]["name"] not in {v["name"] for v in pod_spec(docs)["volumes"]}
    # Default values: a claim too, with the cluster's default StorageClass.
    (claim,) = statefulset(render())["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]


def test_runs_the_controller(render: Render) -> None:
    docs = render()
    args = container(docs)["args"]
    assert "run" in args
    # Global options before the command, `run`'s own after it.
    assert args.index("--state") < args.index("run") < args.index("--listen")
    assert flag(docs, "--listen") == f"0.0.0.0:{PORT}"
    assert flag(docs, "--repo") == "$(RECONCILER_REPO)"  # expanded by Kubernetes
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["RECONCILER_REPO"]["value"] == "https://git.example.com/org/models.git"
    assert "command" not in container(docs), "keep the image's ENTRYPOINT (reconciler)"
    for optional in ("--webhook-secret-file", "--api-token-file", "--known-hosts", "--path"):
        assert flag(docs, optional) is None, f"{optional} without being configured"


def test_repository_url_from_a_secret(render: Render) -> None:
    docs = render(EXISTING)
    env = {e["name"]: e for e in container(docs)["env"]}
    ref = env["RECONCILER_REPO"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("reconciler-repo", "url")
    assert flag(docs, "--repo") == "$(RECONCILER_REPO)"
    assert (flag(docs, "--path"), flag(docs, "--deployment")) == ("models", "production")


def test_a_repository_is_required(helm: str, helm_env: dict[str, str]) -> None:
    done = run_helm(helm, helm_env, "template", "rel", CHART, "--set", "repo.url=")
    assert done.returncode != 0
    assert "repo.url" in done.stderr


def test_probes_hit_healthz_and_readyz_on_the_listen_port(render: Render) -> None:
    c = container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ]:
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == PORT, probe


def test_service_exposes_8430(render: Render) -> None:
    docs = render()
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    service = services["rel-reconciler"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports[port["targetPort"]] == PORT
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)
    pod_labels = statefulset(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The StatefulSet's governing Service is headless.
    headless = services[statefulset(docs)["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"


def test_helm_test_pod_is_not_behind_the_service(render: Render) -> None:
    docs = render()
    (test_pod,) = of_kind(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    for service in of_kind(docs, "Service"):
        assert not service["spec"]["selector"].items() <= test_pod["metadata"]["labels"].items()


def image_user() -> tuple[int, str]:
    """The uid and home folder of the image's user, read from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd[^\n]*--uid (\d+)", text)
    home = re.search(r"--home-dir (\S+)", text)
    assert uid and home
    return int(uid.group(1)), home.group(1)


def test_pod_runs_as_the_image_user_not_root(render: Render) -> None:
    uid, _ = image_user()
    docs = render()
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == uid
    assert pod["fsGroup"] == uid, "fsGroup makes the state volume writable"
    c = container(docs)["securityContext"]
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"]
    assert c.get("runAsUser", uid) == uid and c.get("runAsNonRoot", True) is True
    assert pod_spec(docs)["automountServiceAccountToken"] is False
    assert container(docs)["resources"]["limits"]["memory"]
    (account,) = of_kind(docs, "ServiceAccount")
    assert pod_spec(docs)["serviceAccountName"] == account["metadata"]["name"]


def test_existing_secrets_are_mounted_where_the_flags_point(render: Render) -> None:
    _, home = image_user()
    docs = render(EXISTING)
    # The SSH key the models name as identityFile: ~/.ssh/id_ed25519.
    assert file_source(docs, f"{home}/.ssh/id_ed25519") == (
        "secret",
        "reconciler-ssh",
        "id_ed25519",
        0o400,
    )
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["HOME"] == home
    known_hosts = flag(docs, "--known-hosts")
    assert known_hosts == f"{home}/.ssh/known_hosts"  # also where OpenSSH (git) looks
    assert file_source(docs, known_hosts)[:3] == ("secret", "reconciler-ssh", "known_hosts")
    webhook = flag(docs, "--webhook-secret-file")
    assert webhook is not None
    assert file_source(docs, webhook)[:3] == ("secret", "reconciler-webhook", "secret")
    token = flag(docs, "--api-token-file")
    assert token is not None
    assert file_source(docs, token)[:3] == ("secret", "reconciler-api", "token")
    signers = flag(docs, "--allowed-signers")
    assert signers is not None
    assert file_source(docs, signers)[:3] == ("configMap", "reconciler-signers", "allowed_signers")
    assert flag(docs, "--gpg-keyring") is None
    # The chart creates no Secret of its own when every secret exists already.
    assert not of_kind(docs, "Secret")


def test_inline_secrets_go_into_a_secret_of_the_chart(render: Render) -> None:
    _, home = image_user()
    docs = render(INLINE)
    (secret,) = of_kind(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    name = secret["metadata"]["name"]
    kind, source, key, mode = file_source(docs, f"{home}/.ssh/id_ed25519")
    assert (kind, source, mode) == ("secret", name, 0o400)
    assert data[key].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert data[key].endswith("-----END OPENSSH PRIVATE KEY-----\n")
    known_hosts = flag(docs, "--known-hosts")
    assert known_hosts is not None
    assert data[file_source(docs, known_hosts)[2]].startswith("git.example.com ssh-ed25519 ")
    webhook = flag(docs, "--webhook-secret-file")
    assert webhook is not None
    assert data[file_source(docs, webhook)[2]] == "webhook-test-secret"
    token = flag(docs, "--api-token-file")
    assert token is not None
    assert data[file_source(docs, token)[2]] == "api-test-token"
    (config,) = of_kind(docs, "ConfigMap")
    signers, keyring = flag(docs, "--allowed-signers"), flag(docs, "--gpg-keyring")
    assert signers is not None and keyring is not None
    assert file_source(docs, signers)[1] == config["metadata"]["name"]
    assert config["data"]["allowed_signers"].startswith("alice@example.com ssh-ed25519 ")
    assert config["binaryData"][file_source(docs, keyring)[2]] == "bm90LWEtcmVhbC1rZXlyaW5n"
    # Changing a secret rolls the pod.
    annotations = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/secret", "checksum/signers"} <= annotations.keys()
    assert flag(docs, "--listen") == f"[::]:{PORT}"
    assert container(docs)["args"][-1] == "-v"


def test_writable_home_and_tmp_with_a_read_only_root(render: Render) -> None:
    _, home = image_user()
    docs = render(EXISTING)
    assert container(docs)["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    for path in (home, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    assert mounts[f"{home}/.ssh"]["readOnly"] is True


def test_ingress_routes_the_webhook(render: Render) -> None:
    docs = render(EXISTING)
    (ingress,) = of_kind(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/hooks/git"
    assert path["backend"]["service"] == {"name": "rel-reconciler", "port": {"name": "http"}}
    assert not of_kind(render(), "Ingress"), "no Ingress unless enabled"


def test_every_value_is_documented() -> None:
    """helm/README.md names every value of values.yaml (down to two levels; Kubernetes
    objects passed through as they are, like resources, by their name only)."""
    readme = (ROOT / "helm" / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    kubernetes_objects = {"podSecurityContext", "securityContext", "resources"}
    kubernetes_objects |= {"livenessProbe", "readinessProbe", "startupProbe"}
    missing = []
    for key, value in values.items():
        names = [key]
        if isinstance(value, dict) and value and key not in kubernetes_objects:
            names = [f"{key}.{sub}" for sub in value]
        missing += [name for name in names if name not in readme]
    assert not missing, f"not in helm/README.md: {missing}"


def test_everything_goes_into_the_release_namespace(render: Render) -> None:
    for doc in render(INLINE) + render(EXISTING):
        assert doc["metadata"]["namespace"] == "ops", doc["metadata"]["name"]


# --- several controllers on a PostgreSQL state (SPEC §11) ----------------------------


def env_of(docs: list[Doc]) -> dict[str, Doc]:
    return {e["name"]: e for e in container(docs)["env"]}


def test_replicas_on_postgresql_run_as_a_deployment(render: Render) -> None:
    docs = render(POSTGRES)
    assert not of_kind(docs, "StatefulSet")
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    # The URL from its Secret, as the variable the CLI reads; not on the command line.
    ref = env_of(docs)["RECONCILER_STATE"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("reconciler-state", "url")
    assert flag(docs, "--state") is None
    # The password is a file, for the controller and (by the variable) its applies.
    password = flag(docs, "--state-password-file")
    assert password is not None
    assert file_source(docs, password) == ("secret", "reconciler-state", "password", 0o400)
    assert env_of(docs)["RECONCILER_STATE_PASSWORD_FILE"]["value"] == password
    # No claim: the store cache and the mirror are each replica's own, in an emptyDir.
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[STATE_DIR]]
    assert env_of(docs)["RECONCILER_HOME"]["value"] == STATE_DIR
    # Every replica serves the page and the API: one Service to all, no headless one.
    (service,) = of_kind(docs, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_an_inline_state_url_and_password_stay_out_of_the_pod_spec(render: Render) -> None:
    url, password = "postgresql://reconciler@pg.db.svc:5432/reconciler", "pg-test-password"
    docs = render(sets=(f"state.url={url}", f"state.password={password}"))
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1, "one replica on PostgreSQL: a Deployment too"
    spec = yaml.safe_dump(deployment)
    assert url not in spec and password not in spec
    (secret,) = of_kind(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    ref = env_of(docs)["RECONCILER_STATE"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], data[ref["key"]]) == (secret["metadata"]["name"], url)
    password_file = flag(docs, "--state-password-file")
    assert password_file is not None
    kind, source, key, _ = file_source(docs, password_file)
    assert (kind, source, data[key]) == ("secret", secret["metadata"]["name"], password)
    assert "checksum/secret" in deployment["spec"]["template"]["metadata"]["annotations"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    # A URL that carries its password needs no file.
    docs = render(sets=("state.url=postgresql://u:pw@pg/db",))
    assert flag(docs, "--state-password-file") is None
    assert "RECONCILER_STATE_PASSWORD_FILE" not in env_of(docs)


def test_keys_come_from_the_operators_secrets(render: Render) -> None:
    docs = render(POSTGRES)
    args = container(docs)["args"]
    folder = flag(docs, "--keys-dir")
    assert folder is not None and args.index("--keys-dir") < args.index("run")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "reconciler-keys"
    assert flag(docs, "--key-env-prefix") == "ACME_KEY_"
    # Also as variables: the applies the controller starts, and `kubectl exec`, see them.
    assert env_of(docs)["RECONCILER_KEYS_DIR"]["value"] == folder
    assert env_of(docs)["RECONCILER_KEYS_ENV_PREFIX"]["value"] == "ACME_KEY_"
    (env_from,) = container(docs)["envFrom"]
    assert env_from == {"secretRef": {"name": "reconciler-key-env"}, "prefix": "ACME_KEY_"}
    # Without values: no key folder, and the CLI's default prefix.
    docs = render()
    assert flag(docs, "--keys-dir") is None and flag(docs, "--key-env-prefix") is None
    assert "envFrom" not in container(docs)
    assert not {"RECONCILER_KEYS_DIR", "RECONCILER_KEYS_ENV_PREFIX"} & env_of(docs).keys()
    docs = render(sets=("keyEnvSecret=more-keys",))
    assert container(docs)["envFrom"][0]["prefix"] == "RECONCILER_KEY_"


def test_notifications_and_parallel_applies(render: Render) -> None:
    docs = render(POSTGRES)
    args = container(docs)["args"]
    notify = [args[i + 1] for i, arg in enumerate(args) if arg == "--notify"]
    assert notify == ["https://hooks.example.com/reconciler", "$(SLACK_WEBHOOK_URL)"]
    assert args.index("run") < args.index("--notify")
    secret = flag(docs, "--notify-secret-file")
    assert secret is not None
    assert file_source(docs, secret)[:3] == ("secret", "reconciler-notify", "secret")
    assert flag(docs, "--max-parallel-applies") == "4"
    docs = render()
    for absent in ("--notify", "--notify-secret-file", "--max-parallel-applies"):
        assert flag(docs, absent) is None, absent


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_the_cli_accepts_the_rendered_arguments(render: Render, values: Path | None) -> None:
    """Every option the chart passes exists, in its place (global options before `run`):
    the real `reconciler` parses them all before printing the help."""
    docs = render(values) if values else render()
    args = [re.sub(r"\$\((\w+)\)", "value-of-\\1", arg) for arg in container(docs)["args"]]
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: reconciler run" in done.stdout
