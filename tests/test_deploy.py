"""The deployment files under deploy/: Dockerfiles, Kubernetes manifests, the Vertex AI entrypoint.

No model, no Docker, no cluster: the manifests are parsed with PyYAML,
validated against the Kubernetes JSON schemas that kubernetes-validate ships
(offline), and checked against each other and against the contract of
`gemma-keras serve` (its flags, /health, SIGTERM and --grace). Every check is
a function returning a list of problems, so the tests at the end can break a
copy of deploy/ and see each check notice.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _serve_flags() -> tuple[frozenset[str], float]:
    """The flags and the --grace default of the real `gemma-keras serve` parser."""
    from gemma_keras.cli.commands import build_parser

    command = build_parser().commands["serve"]
    flags = {flag for action in command._actions for flag in action.option_strings if flag.startswith("--")}
    grace = next(a.default for a in command._actions if "--grace" in a.option_strings)
    return frozenset(flags - {"--help"}), float(grace)


SERVE_FLAGS, SERVE_DEFAULT_GRACE = _serve_flags()

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# The oldest Kubernetes minor the manifests must be valid for (strict: no unknown fields).
K8S_VERSION = "1.31"
# At least this long for loading, converting and compiling before the startup probe gives up.
MIN_STARTUP_SECONDS = 300
# Not applied by the kustomization: a placeholder that must never overwrite a real key.
SECRET_EXAMPLE = "secret.example.yaml"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


# ---------------------------------------------------------------- reading


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict:
    docs = load_yaml(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(path: Path, instruction: str) -> tuple[list[str] | None, list[str]]:
    """The last `instruction` (ENTRYPOINT or CMD) as a list, and the problems found reading it."""
    found = [args for word, args in dockerfile_instructions(path) if word == instruction]
    if not found:
        return None, []
    try:
        value = json.loads(found[-1])
    except json.JSONDecodeError:
        return None, [f"{path.name}: {instruction} is not in JSON exec form: {found[-1]}"]
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None, [f"{path.name}: {instruction} is not a JSON list of strings: {found[-1]}"]
    return value, []


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in argv (`--flag V` or `--flag=V`); the last one wins, as in argparse."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def flags_in(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


def strategic_merge(base, patch):
    """Enough of kubectl's strategic merge for our patch: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)  # noqa: E731
    if named(base) and named(patch) and patch:
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            for j, old in enumerate(out):
                if old["name"] == item["name"]:
                    out[j] = strategic_merge(old, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


# ---------------------------------------------------------------- checks


def check_serve_argv(where: str, argv: list[str]) -> list[str]:
    """Every flag is one of the server's; no flag is left without its value."""
    problems = []
    for flag in flags_in(argv):
        if flag not in SERVE_FLAGS:
            problems.append(f"{where}: {flag} is not a flag of `gemma-keras serve`")
    for i, arg in enumerate(argv):
        if arg in SERVE_FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            problems.append(f"{where}: {arg} has no value")
    return problems


def check_dockerfile(path: Path) -> list[str]:
    """ENTRYPOINT `gemma-keras serve --host 0.0.0.0 --port N` in exec form, CMD flags, EXPOSE, HEALTHCHECK."""
    entrypoint, problems = exec_form(path, "ENTRYPOINT")
    cmd, cmd_problems = exec_form(path, "CMD")
    problems += cmd_problems
    if entrypoint is None:
        return problems or [f"{path.name}: no ENTRYPOINT"]
    if entrypoint[:2] != ["gemma-keras", "serve"]:
        problems.append(f"{path.name}: ENTRYPOINT does not start `gemma-keras serve`: {entrypoint}")
    argv = entrypoint[2:] + (cmd or [])
    problems += check_serve_argv(f"{path.name} ENTRYPOINT/CMD", argv)
    if flag_value(argv, "--host") != "0.0.0.0":
        problems.append(f"{path.name}: the server must listen on 0.0.0.0 in a container")
    port = flag_value(entrypoint, "--port")
    if port is None:
        problems.append(f"{path.name}: ENTRYPOINT sets no --port")
    instructions = dockerfile_instructions(path)
    exposed = {a.split("/")[0] for word, args in instructions if word == "EXPOSE" for a in args.split()}
    if port is not None and port not in exposed:
        problems.append(f"{path.name}: EXPOSE {sorted(exposed)} does not include the --port {port}")
    checks = [args for word, args in instructions if word == "HEALTHCHECK"]
    if not checks:
        problems.append(f"{path.name}: no HEALTHCHECK")
    elif (
        not re.search(rf"{re.escape(HEALTH_PATH)}['\"]", checks[-1])
        or "urllib.request.urlopen(" not in checks[-1]
        or f"'{port}'" not in checks[-1]
    ):
        # python:*-slim has no curl: urllib it is.
        problems.append(f"{path.name}: HEALTHCHECK must GET {HEALTH_PATH} on port {port} with urllib")
    users = [args for word, args in instructions if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{path.name}: the server must run as a non-root USER")
    return problems


def check_schemas(k8s: Path) -> list[str]:
    """Every manifest, and the GPU overlay's merged Deployment, against the Kubernetes schemas."""
    import kubernetes_validate

    problems = []

    def validate(where: str, doc: dict) -> None:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")

    for path in sorted(k8s.rglob("*.yaml")):
        for doc in load_yaml(path):
            if doc.get("kind") == "Kustomization" or path.parent.name == "gpu":
                continue
            validate(path.relative_to(k8s).as_posix(), doc)
    validate("gpu overlay (merged)", gpu_deployment(k8s))
    return problems


def gpu_deployment(k8s: Path) -> dict:
    overlay = load_one(k8s / "gpu" / "kustomization.yaml")
    merged = load_one(k8s / "deployment.yaml")
    for patch in overlay.get("patches", []):
        merged = strategic_merge(merged, load_one(k8s / "gpu" / patch["path"]))
    return merged


def check_kustomizations(k8s: Path) -> list[str]:
    problems = []
    base = load_one(k8s / "kustomization.yaml")
    listed = set(base.get("resources", []))
    present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}
    for name in sorted(listed - present):
        problems.append(f"kustomization.yaml lists {name}, which does not exist")
    for name in sorted(present - listed - {SECRET_EXAMPLE}):
        problems.append(f"kustomization.yaml does not list {name}")
    if SECRET_EXAMPLE in listed:
        problems.append(f"kustomization.yaml must not apply the placeholder {SECRET_EXAMPLE}")
    overlay = load_one(k8s / "gpu" / "kustomization.yaml")
    if "../" not in overlay.get("resources", []) and ".." not in overlay.get("resources", []):
        problems.append("gpu/kustomization.yaml does not build on ../")
    for patch in overlay.get("patches", []):
        if not (k8s / "gpu" / patch["path"]).is_file():
            problems.append(f"gpu/kustomization.yaml patches with {patch['path']}, which does not exist")
    limits = server_container(gpu_deployment(k8s)).get("resources", {}).get("limits", {})
    if str(limits.get("nvidia.com/gpu")) != "1":
        problems.append("the GPU overlay's container has no nvidia.com/gpu: 1 limit")
    return problems


def server_container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def resolve_port(container: dict, port) -> int | None:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return int(port) if str(port).isdigit() else None


def grace_seconds(argv: list[str]) -> float:
    value = flag_value(argv, "--grace")
    return float(value) if value is not None else SERVE_DEFAULT_GRACE


def check_deployment(where: str, deployment: dict, dockerfile: Path) -> list[str]:
    """Probes, ports, grace period and annotations of one Deployment against its image's Dockerfile."""
    problems = []
    entrypoint, _ = exec_form(dockerfile, "ENTRYPOINT")
    cmd, _ = exec_form(dockerfile, "CMD")
    image_port = int(flag_value(entrypoint or [], "--port") or 0)
    pod = deployment["spec"]["template"]
    container = server_container(deployment)
    if "command" in container:
        problems.append(f"{where}: `command` replaces the image's ENTRYPOINT (and its --port)")
    # Kubernetes' args replace the image's CMD; the ENTRYPOINT stays.
    argv = (entrypoint or [])[2:] + (container["args"] if "args" in container else cmd or [])
    problems += check_serve_argv(f"{where} args", container.get("args", []))

    ports = [p["containerPort"] for p in container.get("ports", [])]
    if ports != [image_port]:
        problems.append(f"{where}: containerPort {ports} is not the image's --port {image_port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        if spec is None:
            problems.append(f"{where}: no {probe}")
            continue
        http = spec.get("httpGet", {})
        if http.get("path") != HEALTH_PATH:
            problems.append(f"{where}: {probe} path is {http.get('path')!r}, not {HEALTH_PATH}")
        if resolve_port(container, http.get("port")) != image_port:
            problems.append(f"{where}: {probe} port {http.get('port')!r} is not {image_port}")
    startup = container.get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < MIN_STARTUP_SECONDS:
        problems.append(f"{where}: the startupProbe gives up after {budget} s, under {MIN_STARTUP_SECONDS} s")

    grace = grace_seconds(argv)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = float(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0.0
    period = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if not period > grace + sleep:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {period} must exceed --grace {grace:g} + preStop {sleep:g}"
        )

    labels = pod["metadata"].get("labels", {})
    selector = deployment["spec"]["selector"].get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{where}: the selector {selector} does not match the pod labels {labels}")
    notes = pod["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/path") != METRICS_PATH:
        problems.append(f"{where}: the pod is not annotated for Prometheus on {METRICS_PATH}")
    if notes.get("prometheus.io/port") != str(image_port):
        problems.append(
            f"{where}: prometheus.io/port {notes.get('prometheus.io/port')!r} is not {image_port}"
        )
    env = {e["name"]: e for e in container.get("env", [])}
    api_key = env.get("GEMMA_KERAS_API_KEY", {}).get("valueFrom", {})
    if "secretKeyRef" not in api_key:
        problems.append(f"{where}: GEMMA_KERAS_API_KEY does not come from a Secret")
    if "--api-key" in argv:
        problems.append(f"{where}: the API key is on the command line; use the Secret")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    cache = env.get("GEMMA_KERAS_CACHE", {}).get("value")
    if cache not in mounts:
        problems.append(f"{where}: GEMMA_KERAS_CACHE {cache!r} is not a mounted volume")
    return problems


def check_manifests(deploy: Path) -> list[str]:
    """The manifests against each other and against the Dockerfiles."""
    k8s = deploy / "k8s"
    deployment = load_one(k8s / "deployment.yaml")
    service = load_one(k8s / "service.yaml")
    hpa = load_one(k8s / "hpa.yaml")
    secret = load_one(k8s / SECRET_EXAMPLE)
    problems = check_deployment("deployment.yaml", deployment, deploy / "Dockerfile")
    problems += check_deployment("gpu overlay", gpu_deployment(k8s), deploy / "Dockerfile.cuda")

    container = server_container(deployment)
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    selector = service["spec"].get("selector", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"service.yaml: the selector {selector} matches no pod of the Deployment")
    image_port = int(flag_value(exec_form(deploy / "Dockerfile", "ENTRYPOINT")[0] or [], "--port") or 0)
    for port in service["spec"]["ports"]:
        if resolve_port(container, port.get("targetPort", port["port"])) != image_port:
            problems.append(f"service.yaml: targetPort {port.get('targetPort')!r} is not {image_port}")
        if port["port"] != 80:
            problems.append(f"service.yaml: port {port['port']} is not 80")

    target = hpa["spec"]["scaleTargetRef"]
    wanted = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    if {k: target.get(k) for k in wanted} != wanted:
        problems.append(f"hpa.yaml: the HorizontalPodAutoscaler targets {target}, not {wanted}")
    if not 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]:
        problems.append("hpa.yaml: need 1 <= minReplicas <= maxReplicas")

    values = {**secret.get("data", {}), **secret.get("stringData", {})}
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        if ref["name"] != secret["metadata"]["name"]:
            problems.append(
                f"deployment.yaml: {env['name']} reads Secret {ref['name']}, not in {SECRET_EXAMPLE}"
            )
        elif ref["key"] not in values:
            problems.append(f"deployment.yaml: {env['name']} reads key {ref['key']}, not in {SECRET_EXAMPLE}")
    if not all("REPLACE" in str(v) for v in values.values()):
        problems.append(f"{SECRET_EXAMPLE}: every value must be an obvious placeholder (REPLACE...)")
    return problems


def check_dockerignore(root: Path) -> list[str]:
    """The build context keeps what `pip install .` and the Dockerfiles need."""
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]
    needed = ["pyproject.toml", "README.md", "gemma_keras/__init__.py", "deploy/vertex-entrypoint.sh"]
    problems = []
    for path in needed:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, bare) for p in prefixes):
                problems.append(f".dockerignore: {pattern} leaves {path} out of the build context")
    for name in (".git", ".nox"):
        if name not in patterns:
            problems.append(f".dockerignore: {name} is sent to the builder")
    return problems


# ---------------------------------------------------------------- tests


def test_every_yaml_parses():
    paths = sorted((DEPLOY / "k8s").rglob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        for doc in load_yaml(path):
            assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), path


def _kubernetes_validate():
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("kubernetes-validate is not installed (it is in the test extra)")


def test_manifests_match_the_kubernetes_schemas():
    _kubernetes_validate()
    assert check_schemas(DEPLOY / "k8s") == []


def test_kustomizations_list_every_manifest_and_the_gpu_overlay_adds_a_gpu():
    assert check_kustomizations(DEPLOY / "k8s") == []


def test_manifests_agree_with_each_other_and_with_the_server():
    assert check_manifests(DEPLOY) == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_starts_gemma_keras_serve_with_its_flags(name):
    assert check_dockerfile(DEPLOY / name) == []


def test_dockerignore_keeps_the_package_and_drops_the_rest():
    assert check_dockerignore(ROOT) == []


def test_vertex_entrypoint_listens_on_aip_http_port(tmp_path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh")
    fake = tmp_path / "gemma-keras"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    script = DEPLOY / "vertex-entrypoint.sh"
    base = {"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(env: dict, *args: str) -> tuple[list[str], str]:
        done = subprocess.run(
            [sh, str(script), *args], env={**base, **env}, capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split(), done.stderr

    argv, err = run(
        {"AIP_HTTP_PORT": "8080", "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/v1/chat/completions"},
        "--max-batch",
        "4",
    )
    assert argv[0] == "serve" and flag_value(argv, "--port") == "8080", argv
    assert flag_value(argv, "--host") == "0.0.0.0" and flag_value(argv, "--max-batch") == "4"
    assert check_serve_argv("vertex-entrypoint.sh", argv[1:]) == [] and err == ""
    argv, _ = run({})
    assert flag_value(argv, "--port") == "8000"
    # Routes the server does not have are reported, not silently ignored.
    _, err = run({"AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2", "AIP_PREDICT_ROUTE": "/predict"})
    assert "--container-health-route=/health" in err and "--container-predict-route" in err


# Each check must be able to fail: break one thing in a copy of deploy/ and see it reported.


def _edit_yaml(path: Path, edit) -> None:
    doc = load_one(path)
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _set(path: list, value):
    def edit(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


_POD = ["spec", "template", "spec"]
_SERVER = [*_POD, "containers", 0]
BREAKAGES = {
    "probe path": ("k8s/deployment.yaml", _set([*_SERVER, "readinessProbe", "httpGet", "path"], "/healthz"), "readinessProbe path"),
    "probe port": ("k8s/deployment.yaml", _set([*_SERVER, "livenessProbe", "httpGet", "port"], 8080), "livenessProbe port"),
    "container port": ("k8s/deployment.yaml", _set([*_SERVER, "ports", 0, "containerPort"], 8080), "containerPort"),
    "service targetPort": ("k8s/service.yaml", _set(["spec", "ports", 0, "targetPort"], 8080), "targetPort"),
    "service selector": ("k8s/service.yaml", _set(["spec", "selector"], {"app": "other"}), "selector"),
    "grace period": ("k8s/deployment.yaml", _set([*_POD, "terminationGracePeriodSeconds"], 30), "terminationGracePeriodSeconds"),
    "longer --grace": ("k8s/deployment.yaml", _set([*_SERVER, "args"], ["--grace", "60"]), "terminationGracePeriodSeconds"),
    "unknown flag in args": ("k8s/deployment.yaml", _set([*_SERVER, "args"], ["--workers", "4"]), "--workers is not a flag"),
    "api key on the command line": ("k8s/deployment.yaml", _set([*_SERVER, "args"], ["--api-key", "x"]), "use the Secret"),
    "short startup probe": ("k8s/deployment.yaml", _set([*_SERVER, "startupProbe", "failureThreshold"], 3), "startupProbe gives up"),
    "hpa target": ("k8s/hpa.yaml", _set(["spec", "scaleTargetRef", "name"], "gemma"), "HorizontalPodAutoscaler targets"),
    "secret key": ("k8s/secret.example.yaml", _set(["stringData"], {"key": "REPLACE-ME"}), "reads key api-key"),
    "real-looking secret": ("k8s/secret.example.yaml", _set(["stringData", "api-key"], "s3cr3t"), "placeholder"),
    "scrape port": ("k8s/deployment.yaml", _set(["spec", "template", "metadata", "annotations", "prometheus.io/port"], "9090"), "prometheus.io/port"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_a_broken_manifest_is_reported(tmp_path, name):
    path, edit, expected = BREAKAGES[name]
    deploy = shutil.copytree(DEPLOY, tmp_path / "deploy")
    _edit_yaml(deploy / path, edit)
    problems = check_manifests(deploy)
    assert any(expected in p for p in problems), problems


SCHEMA_BREAKAGES = {
    "misspelt field": (_set([*_SERVER, "readinessProbe", "periodSecond"], 5), "periodSecond"),
    "port as text": (_set([*_SERVER, "ports", 0, "containerPort"], "eight thousand"), "containerPort"),
    "no selector": (lambda doc: doc["spec"].pop("selector"), "selector"),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_BREAKAGES))
def test_a_manifest_the_schema_rejects_is_reported(tmp_path, name):
    _kubernetes_validate()
    edit, expected = SCHEMA_BREAKAGES[name]
    k8s = shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    _edit_yaml(k8s / "deployment.yaml", edit)
    problems = check_schemas(k8s)
    # The base Deployment and the GPU overlay built on it.
    assert sum(expected in p for p in problems) == 2, problems


def test_a_broken_kustomization_is_reported(tmp_path):
    k8s = shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    (k8s / "extra.yaml").write_text((k8s / "service.yaml").read_text())
    _edit_yaml(k8s / "kustomization.yaml", lambda d: d["resources"].append(SECRET_EXAMPLE))
    _edit_yaml(k8s / "gpu" / "deployment-patch.yaml", lambda d: _container(d)["resources"]["limits"].clear())
    problems = "\n".join(check_kustomizations(k8s))
    assert "does not list extra.yaml" in problems
    assert "must not apply the placeholder" in problems
    assert "nvidia.com/gpu" in problems


DOCKERFILE_BREAKAGES = {
    "unknown flag": ('"--port", "8000"]', '"--port", "8000", "--workers", "2"]', "--workers is not a flag"),
    "shell form": ('ENTRYPOINT ["gemma-keras", "serve", "--host", "0.0.0.0", "--port", "8000"]', "ENTRYPOINT gemma-keras serve --port 8000", "JSON exec form"),
    "another command": ('["gemma-keras", "serve",', '["gemma-keras", "generate",', "does not start `gemma-keras serve`"),
    "localhost": ('"--host", "0.0.0.0"', '"--host", "127.0.0.1"', "0.0.0.0"),
    "port not exposed": ("EXPOSE 8000", "EXPOSE 8080", "EXPOSE"),
    "health path": ("/health' %", "/healthz' %", "HEALTHCHECK"),
    "health by requests": ("urllib.request.urlopen(", "requests.get(", "HEALTHCHECK"),
    "health port": ("'AIP_HTTP_PORT', '8000'", "'AIP_HTTP_PORT', '8080'", "HEALTHCHECK"),
    "root": ("USER 10001:10001", "USER root", "non-root"),
    "flag without value": ('"--grace", "30"]', '"--grace"]', "--grace has no value"),
}  # fmt: skip


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
@pytest.mark.parametrize("name", sorted(DOCKERFILE_BREAKAGES))
def test_a_broken_dockerfile_is_reported(tmp_path, dockerfile, name):
    old, new, expected = DOCKERFILE_BREAKAGES[name]
    text = (DEPLOY / dockerfile).read_text()
    assert old in text, f"{dockerfile} changed: update the breakage {name!r}"
    path = tmp_path / dockerfile
    path.write_text(text.replace(old, new))
    problems = check_dockerfile(path)
    assert any(expected in p for p in problems), problems


def test_a_broken_dockerignore_is_reported(tmp_path):
    text = (ROOT / ".dockerignore").read_text()
    (tmp_path / ".dockerignore").write_text(text.replace(".nox\n", "") + "deploy\n*.toml\n")
    problems = "\n".join(check_dockerignore(tmp_path))
    assert "leaves pyproject.toml out" in problems
    assert "leaves deploy/vertex-entrypoint.sh out" in problems
    assert ".nox is sent" in problems


def test_flags_come_from_one_constant(monkeypatch):
    """Replacing SERVE_FLAGS (with `gemma-keras serve --help`'s flags, later) changes what is accepted."""
    argv = ["--host", "0.0.0.0", "--port", "8000", "--grace", "30"]
    assert check_serve_argv("x", argv) == []
    monkeypatch.setattr(sys.modules[__name__], "SERVE_FLAGS", SERVE_FLAGS - {"--grace"})
    assert check_serve_argv("x", argv) == ["x: --grace is not a flag of `gemma-keras serve`"]
