#!/usr/bin/env python3
"""Static checks of deploy/ and docker/ that need no cluster and no Docker engine.

usage: check_files.py METRICS_PAGE

- every metric the Grafana dashboard and the alerting rules query is one Suture exports
  (METRICS_PAGE is a /metrics page of a freshly started Suture, where every series exists);
- the dashboard has a `pool` variable and the panels issue 11 lists;
- the PodMonitor and the Deployment agree on the admin port name and the pod labels;
- the unix-socket overlay: its files exist, one volume is mounted by Suture and the application
  at the same place, and the socket Suture listens on is the one the application's DSN names;
- docker/compose.yaml parses, every file it mounts or builds from exists, and its ports agree
  with docker/suture.toml and docker/prometheus.yml; the Grafana provisioning points at the
  dashboard's mount.
Prints one line per check and exits non-zero if any failed.
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def exported(page):
    names = set()
    for line in page.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "max_over_time", "le",
    "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "min", "avg", "count", "topk", "label_values",
}


def metrics_in(expr):
    # Drop label matchers, strings and range selectors, then take identifiers that look like
    # Suture's series.
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w.startswith("suture_")}


def main():
    page = open(sys.argv[1]).read()
    names = exported(page)
    check(len(names) > 10, f"Suture's /metrics lists {len(names)} series names")

    dash = json.load(open(os.path.join(ROOT, "deploy/grafana/suture-dashboard.json")))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] if isinstance(v.get("query"), dict) else str(v.get("query", ""))
        for v in dash["templating"]["list"]
    ]
    rules = yaml.safe_load(open(os.path.join(ROOT, "deploy/prometheus/suture-rules.yaml")))
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set()
    for e in exprs + rule_exprs:
        used |= metrics_in(e)
    check(len(used) >= 9, f"dashboard and rules query {len(used)} Suture series")
    for name in sorted(used):
        check(name in names, f"{name} (queried) is exported by Suture")

    variables = {v["name"] for v in dash["templating"]["list"]}
    check("pool" in variables, "the dashboard has a pool variable")
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ["idle closes", "replays", "refusals", "heals", "backend connections",
                   "checkout wait", "request latency", "held requests", "event-loop lag"]:
        check(wanted in titles, f"the dashboard has a panel for {wanted}")
    for p in dash["panels"]:
        for t in p.get("targets", []):
            if "pool" in t["expr"] and "suture_request_duration" not in t["expr"] \
                    and "suture_event_loop" not in t["expr"]:
                check('pool=~"$pool"' in t["expr"], f"panel {p['title']!r} filters on $pool")

    base = os.path.join(ROOT, "deploy/base")
    kustomization = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
    for res in kustomization["resources"]:
        check(os.path.exists(os.path.join(base, res)), f"kustomization resource {res} exists")
    deployment = yaml.safe_load(open(os.path.join(base, "deployment.yaml")))
    pod = deployment["spec"]["template"]
    sidecar = pod["spec"]["initContainers"][0]
    check(sidecar.get("restartPolicy") == "Always", "Suture is a native sidecar (restartPolicy: Always)")
    port_names = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe, path in [("startupProbe", "/startup"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")]:
        check(sidecar[probe]["httpGet"]["path"] == path, f"{probe} asks {path}")
        check(sidecar[probe]["httpGet"]["port"] in port_names, f"{probe} port is a named port")
    sc = sidecar["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"], "sidecar securityContext is restrictive")
    check(pod["spec"]["securityContext"].get("runAsNonRoot") is True, "pod runs as non-root")
    check("limits" in sidecar["resources"] and "requests" in sidecar["resources"], "sidecar has requests and limits")
    cm = yaml.safe_load(open(os.path.join(base, "configmap.yaml")))
    toml = cm["data"]["suture.toml"]
    drain = re.search(r'drain_timeout = "(\d+)s"', toml)
    accept = re.search(r'accept_for = "(\d+)s"', toml)
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    total = int(drain.group(1)) + int(accept.group(1))
    check(grace > total, f"terminationGracePeriodSeconds {grace} > accept_for + drain_timeout ({total})")
    admin_port = int(re.search(r'\[admin\]\s*\n(?:#.*\n)*listen = "[^"]*:(\d+)"', toml).group(1))
    check(port_names.get("suture-admin") == admin_port, f"admin port {admin_port} is the container's suture-admin port")
    ann = pod["metadata"]["annotations"]
    check(ann.get("prometheus.io/port") == str(admin_port), "scrape annotation names the admin port")
    podmon = yaml.safe_load(open(os.path.join(base, "podmonitor.yaml")))
    check(podmon["kind"] == "PodMonitor" and podmon["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor kind")
    sel = podmon["spec"]["selector"]["matchLabels"]
    check(all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), "PodMonitor selects the pods")
    endpoints = podmon["spec"]["podMetricsEndpoints"]
    check(all(e["port"] in port_names and e["path"] == "/metrics" for e in endpoints), "PodMonitor scrapes suture-admin /metrics")

    check_unix_overlay()

    docker = os.path.join(ROOT, "docker")
    compose = yaml.safe_load(open(os.path.join(docker, "compose.yaml")))
    services = compose["services"]
    check(set(services) >= {"postgres", "suture", "prometheus", "grafana"}, "compose has the four services")
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                check(os.path.exists(os.path.join(docker, src)), f"{name} mounts {src}, which exists")
    build = services["suture"]["build"]
    context = os.path.normpath(os.path.join(docker, build["context"]))
    dockerfile = os.path.join(context, build["dockerfile"])
    check(os.path.exists(dockerfile), "the Dockerfile exists")
    for line in open(dockerfile):
        m = re.match(r"COPY (?!--from)(.+) \S+$", line.strip())
        if m:
            for src in m.group(1).split():
                check(os.path.exists(os.path.join(context, src)), f"Dockerfile COPY {src} exists")
    text = open(dockerfile).read()
    check(text.count("FROM ") >= 2 and "USER 65532" in text and "--release" in text,
          "Dockerfile: multi-stage, release build, non-root user")
    suture_toml = open(os.path.join(docker, "suture.toml")).read()
    admin = re.search(r'\[admin\]\s*\nlisten = "[^"]*:(\d+)"', suture_toml).group(1)
    pool = re.search(r'\[pools\.app\][^\[]*?listen = "[^"]*:(\d+)"', suture_toml).group(1)
    ports = {p.split(":")[1] for p in services["suture"]["ports"]}
    check({admin, pool} <= ports, f"compose publishes Suture's ports {pool} and {admin}")
    check('servers = ["postgres:5432"]' in suture_toml, "Suture points at the postgres service")
    prom = yaml.safe_load(open(os.path.join(docker, "prometheus.yml")))
    targets = [t for sc in prom["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]]
    check(f"suture:{admin}" in targets, "Prometheus scrapes suture's admin port")
    ds = yaml.safe_load(open(os.path.join(docker, "grafana/provisioning/datasources/prometheus.yaml")))
    check(ds["datasources"][0]["url"].endswith("prometheus:9090"), "Grafana's data source is the prometheus service")
    prov = yaml.safe_load(open(os.path.join(docker, "grafana/provisioning/dashboards/suture.yaml")))
    path = prov["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    check(any(m.startswith(path) for m in mounts), "Grafana's dashboard provider path is where the dashboard is mounted")

    print(f"{len(failures)} failed")
    return 1 if failures else 0


def check_unix_overlay():
    overlay = os.path.join(ROOT, "deploy/overlays/unix-socket")
    kustomization = yaml.safe_load(open(os.path.join(overlay, "kustomization.yaml")))
    for res in kustomization["resources"]:
        check(os.path.exists(os.path.join(overlay, res)), f"overlay resource {res} exists")
    for patch in kustomization["patches"]:
        check(os.path.exists(os.path.join(overlay, patch["path"])), f"overlay patch {patch['path']} exists")
    pod = yaml.safe_load(open(os.path.join(overlay, "deployment-patch.yaml")))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = pod["initContainers"][0]
    app = pod["containers"][0]
    def mounts(container):
        return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    shared = [n for n, v in volumes.items() if "emptyDir" in v]
    check(len(shared) == 1, "the overlay adds one emptyDir volume")
    name = shared[0] if shared else None
    where = mounts(sidecar).get(name)
    check(where is not None and mounts(app).get(name) == where,
          f"Suture and the application mount {name} at the same path ({where})")
    toml = yaml.safe_load(open(os.path.join(overlay, "configmap-patch.yaml")))["data"]["suture.toml"]
    listen = re.search(r'\[pools\.app\][^\[]*?listen = "unix:([^"]+)"', toml)
    check(listen is not None, "the overlay's pool listens on a unix: path")
    if listen is None or where is None:
        return
    socket = listen.group(1)
    check(os.path.dirname(socket) == where, f"the socket {socket} is in the shared volume {where}")
    env = {e["name"]: e.get("value", "") for e in app["env"]}
    dsn = env.get("DATABASE_URL", "")
    m = re.search(r"[?&]host=([^&]+)&port=(\d+)", dsn)
    check(m is not None and os.path.join(m.group(1), f".s.PGSQL.{m.group(2)}") == socket,
          f"the application's DSN ({dsn}) names the socket {socket}")
    names = [e["name"] for e in app["env"]]
    check("DB_PASSWORD" in names and names.index("DB_PASSWORD") < names.index("DATABASE_URL"),
          "DB_PASSWORD comes before DATABASE_URL, which refers to it")


if __name__ == "__main__":
    sys.exit(main())
