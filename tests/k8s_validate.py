#!/usr/bin/python3
"""Offline validation of moed's Kubernetes manifests (deploy/k8s/): no cluster, no kubectl.

    k8s_validate.py [--bin BUILD/bin] DIR...

    k8s_validate.py deploy/k8s deploy/k8s/submit        # plaintext, and the demo job
    k8s_validate.py deploy/k8s/tls deploy/k8s/submit    # with TLS

Each DIR holds a kustomization.yaml, rendered here as `kubectl kustomize` would for the subset
of kustomize the manifests use (resources, files or a base directory; namespace; images;
secretGenerator and configMapGenerator with disableNameSuffixHash; inline JSON 6902 patches;
anything else is refused, not guessed at), and the objects of all of them are checked together:

- every object deserializes into the typed models of the Kubernetes Python client (Debian's
  python3-kubernetes), strictly: an unknown field, a value of the wrong type, or a missing
  required field fails. The client's models are Kubernetes 1.22's; the one newer field the
  manifests use (a probe's `grpc`, GA in 1.27) is checked from NEWER_FIELDS below;
- names, labels and selectors agree: every selector selects a pod template, no two workloads
  select each other's pods, a StatefulSet's serviceName is a headless Service selecting it;
- ports: Service targetPorts, NetworkPolicy ports and probe ports are ports of the selected
  containers, and a daemon's containerPorts are exactly the ports it is told to listen on;
- every Secret, ConfigMap, key, volume and claim referred to exists; every file path given
  under a Secret or ConfigMap mount is a key of it; what a daemon writes is on a writable volume;
- a daemon serving TLS has no gRPC probe (Kubernetes' gRPC probe cannot speak TLS);
- the daemons' command lines: every flag is one the built binary's --help lists, with a value
  when it takes one, within its bounds or choices; required flags are given; $(VAR)s are
  defined; a worker advertises its own StatefulSet DNS name on the ports it listens on; the
  address it dials is a Service port that reaches the coordinator's --listen port; moectl's
  subcommands and variables are moectl's;
- pod security: Kubernetes' "restricted" profile, a read-only root filesystem, resource
  requests and a memory limit;
- the worker StatefulSets differ only in their names and pod label, one per pod of the mesh;
  the job spec submitted fits them (pods, slots) and reads only under their --data-root;
- with --dockerfile: every shared library the built binaries load (ldd) belongs to a Debian
  package that the image's runtime stage installs, or that those or apt depend on (dpkg), and
  that stage copies the three binaries. The image itself is not built.

Exit 0 when everything holds; else 1, one line per problem. Not checked: anything a cluster,
an admission controller, a network plugin or the image would decide (docs/deploy/kubernetes.md).
"""
import argparse
import base64
import copy
import difflib
import os
import re
import shlex
import subprocess
import sys

import yaml
from kubernetes import client

KINDS = {  # (apiVersion, kind) -> the client's model
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("batch/v1", "Job"): "V1Job",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
CLUSTER_SCOPED = {"Namespace"}
# Fields newer than the client's models (Kubernetes 1.22): model -> field -> its schema
NEWER_FIELDS = {
    "V1Probe": {"grpc": {"port": ("int", True), "service": ("str", False)}},
}
# Quantities are strings in the models, but YAML numbers are accepted by the API server
QUANTITY_FIELDS = {"limits", "requests", "size_limit", "divisor", "capacity", "storage"}
DAEMONS = ("moed-coordinator", "moed-worker")
LISTEN_FLAGS = ("listen", "data-listen", "http-listen")
WRITTEN_FLAGS = ("dir", "addr-file", "http-addr-file")  # paths the daemons create or write
ADVERTISED = {"advertise": "listen", "data-advertise": "data-listen"}
# HOST:PORT values that name the coordinator as others dial it: a Service port reaching its --listen
DIAL_FLAGS = {"moed-worker": ("coordinator",), "moed-coordinator": ("advertise",)}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "secretGenerator",
                    "configMapGenerator", "generatorOptions", "patches"}
POD_LABEL = "moed-pod"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
VAR_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, where, what):
        self.lines.append(f"{where}: {what}")


class Obj:
    """One rendered object: its dict, where it came from, its typed model."""

    def __init__(self, doc, origin):
        self.doc, self.origin, self.model = doc, origin, None
        self.kind = doc.get("kind", "?")
        meta = doc.get("metadata") or {}
        self.name = meta.get("name", "?")
        self.ns = meta.get("namespace")

    def where(self):
        return f"{self.origin}: {self.kind}/{self.name}"


# ---- rendering (the kustomize subset) ----

def read_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def generator_files(entry, kdir, problems, where, must_exist):
    """key -> content (None when the file is absent and may be, as a token not yet made)."""
    out = {}
    for spec in entry.get("files") or []:
        key, _, rel = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
        path = os.path.normpath(os.path.join(kdir, rel))
        if not path.startswith(os.path.normpath(kdir) + os.sep):
            problems.add(where, f"{rel}: outside the kustomization's directory (kustomize refuses it)")
        if os.path.exists(path):
            with open(path) as f:
                out[key] = f.read()
        elif must_exist:
            problems.add(where, f"{rel}: no such file")
        else:
            out[key] = None
    unknown = set(entry) - {"name", "files"}
    if unknown:
        problems.add(where, f"generator fields this validator does not render: {sorted(unknown)}")
    return out


def generate(k, kdir, problems, where):
    objs = []
    for entry in k.get("secretGenerator") or []:
        files = generator_files(entry, kdir, problems, where, must_exist=False)
        data = {key: base64.b64encode(v.encode()).decode() if v is not None else "" for key, v in
                files.items()}
        doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": entry.get("name")},
               "type": "Opaque", "data": data}
        objs.append(Obj(doc, f"{where} (secretGenerator)"))
    for entry in k.get("configMapGenerator") or []:
        files = generator_files(entry, kdir, problems, where, must_exist=True)
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": entry.get("name")},
               "data": files}
        objs.append(Obj(doc, f"{where} (configMapGenerator)"))
    if (k.get("secretGenerator") or k.get("configMapGenerator")) and \
            not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        problems.add(where, "generators without disableNameSuffixHash: true (the names other "
                            "manifests and the docs use would get a hash suffix)")
    return objs


def set_images(doc, images):
    spec = doc.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for img in images:
            if c.get("image") == img.get("name"):
                new = img.get("newName", img["name"])
                c["image"] = f"{new}:{img['newTag']}" if "newTag" in img else new


def render(kdir, problems):
    """The objects `kubectl kustomize kdir` prints, for the subset used here."""
    where = os.path.join(kdir, "kustomization.yaml")
    k = read_yaml_docs(where)[0]
    unknown = set(k) - KUSTOMIZE_FIELDS
    if unknown:
        problems.add(where, f"kustomization fields this validator does not render: {sorted(unknown)}")
    objs = []
    for rel in k.get("resources") or []:
        path = os.path.join(kdir, rel)
        if os.path.isfile(os.path.join(path, "kustomization.yaml")):  # a base this one builds on
            base = os.path.realpath(path)
            if (os.path.realpath(kdir) + os.sep).startswith(base + os.sep):
                problems.add(where, f"resource {rel} contains this kustomization (kustomize "
                                    f"refuses the cycle: put the overlay beside its base)")
            else:
                objs += render(os.path.normpath(path), problems)
        elif not os.path.isfile(path):
            problems.add(where, f"resource {rel}: no such file")
        else:
            objs += [Obj(doc, f"{path}#{i + 1}") for i, doc in enumerate(read_yaml_docs(path))]
    objs += generate(k, kdir, problems, where)
    for i, patch in enumerate(k.get("patches") or []):
        apply_patch(objs, patch, f"{where}: patches[{i}]", problems)
    for o in objs:
        set_images(o.doc, k.get("images") or [])
        if k.get("namespace") and o.kind not in CLUSTER_SCOPED:
            o.doc.setdefault("metadata", {})["namespace"] = k["namespace"]
            o.ns = k["namespace"]
    unlisted = sorted(set(f for f in os.listdir(kdir) if f.endswith((".yaml", ".yml"))) -
                      {"kustomization.yaml"} - set(k.get("resources") or []) -
                      generator_sources(k))
    for f in unlisted:
        problems.add(where, f"{f} is neither a resource nor a generator's file (forgotten?)")
    return objs


def apply_patch(objs, patch, where, problems):
    """A JSON 6902 patch (inline) on every object its target names."""
    target, ops = patch.get("target") or {}, yaml.safe_load(patch.get("patch") or "null")
    if set(patch) - {"target", "patch"} or set(target) - {"kind", "name", "labelSelector"} or \
            not isinstance(ops, list):
        problems.add(where, "only inline JSON 6902 patches with a target of kind, name and "
                            "labelSelector are rendered here")
        return
    want = dict(kv.split("=", 1) for kv in (target.get("labelSelector") or "").split(",") if kv)
    hits = [o for o in objs if o.kind == target.get("kind", o.kind) and
            o.name == target.get("name", o.name) and
            all(((o.doc.get("metadata") or {}).get("labels") or {}).get(a) == b for a, b in want.items())]
    if not hits:
        problems.add(where, f"target {target} matches no object")
    for o in hits:
        for op in ops:
            try:
                json_patch_op(o.doc, op)
            except (KeyError, IndexError, ValueError, TypeError) as e:
                problems.add(where, f"{o.kind}/{o.name}: {op.get('op')} {op.get('path')}: "
                                    f"no such path ({e!r})")


def json_patch_op(doc, op):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last, kind = parts[-1], op["op"]
    if isinstance(parent, list):
        if kind == "add":
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[int(last)] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[int(last)]
        else:
            raise ValueError(kind)
    elif kind == "add" or (kind == "replace" and last in parent):
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise KeyError(last)


def generator_sources(k):
    out = set()
    for entry in (k.get("secretGenerator") or []) + (k.get("configMapGenerator") or []):
        for spec in entry.get("files") or []:
            out.add(spec.partition("=")[2] if "=" in spec else spec)
    return out


# ---- typed models ----

def strict(typ, value, path, problems, where, attr=""):
    """value converted to the client's type `typ`, refusing what the API server would."""
    if value is None:
        return None
    m = re.match(r"list\[(.*)\]$", typ)
    if m:
        if not isinstance(value, list):
            problems.add(where, f"{path}: a list expected, not {type(value).__name__}")
            return None
        return [strict(m.group(1), v, f"{path}[{i}]", problems, where) for i, v in enumerate(value)]
    m = re.match(r"dict\(str, (.*)\)$", typ)
    if m:
        if not isinstance(value, dict):
            problems.add(where, f"{path}: a map expected, not {type(value).__name__}")
            return None
        return {k: strict(m.group(1), v, f"{path}.{k}", problems, where, attr)
                for k, v in value.items()}
    if typ in ("str", "int", "bool", "float", "object", "datetime", "date"):
        return primitive(typ, value, path, problems, where, attr)
    return build(typ, value, path, problems, where)


def primitive(typ, value, path, problems, where, attr):
    ok = {"str": isinstance(value, str) or (attr in QUANTITY_FIELDS and
                                           isinstance(value, (int, float)) and
                                           not isinstance(value, bool)),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "object": True, "datetime": isinstance(value, str), "date": isinstance(value, str)}[typ]
    if not ok:
        problems.add(where, f"{path}: {typ} expected, not {type(value).__name__} {value!r}")
    return value


def build(cls_name, value, path, problems, where):
    cls = getattr(client, cls_name)
    if not isinstance(value, dict):
        problems.add(where, f"{path}: an object ({cls_name}) expected, not {value!r}")
        return None
    by_json = {j: a for a, j in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        if key in NEWER_FIELDS.get(cls_name, {}):
            check_newer(NEWER_FIELDS[cls_name][key], v, f"{path}.{key}", problems, where)
        elif key not in by_json:
            near = difflib.get_close_matches(key, list(by_json), 1)
            problems.add(where, f"{path}: unknown field '{key}'" +
                         (f" (did you mean '{near[0]}'?)" if near else ""))
        else:
            attr = by_json[key]
            kwargs[attr] = strict(cls.openapi_types[attr], v, f"{path}.{key}", problems, where,
                                  attr)
    conf = client.Configuration()
    conf.client_side_validation = True
    try:
        return cls(local_vars_configuration=conf, **kwargs)
    except (ValueError, TypeError) as e:
        problems.add(where, f"{path}: {e}")
        return None


def check_newer(schema, value, path, problems, where):
    if not isinstance(value, dict):
        problems.add(where, f"{path}: an object expected")
        return
    for key in value:
        if key not in schema:
            problems.add(where, f"{path}: unknown field '{key}'")
    for key, (typ, required) in schema.items():
        if key not in value:
            if required:
                problems.add(where, f"{path}.{key}: required")
        else:
            primitive(typ, value[key], f"{path}.{key}", problems, where, key)


def check_models(objs, problems):
    for o in objs:
        cls = KINDS.get((o.doc.get("apiVersion"), o.kind))
        if not cls:
            problems.add(o.where(), f"apiVersion {o.doc.get('apiVersion')} kind {o.kind}: "
                                    f"not one this validator knows ({sorted(KINDS)})")
            continue
        o.model = build(cls, o.doc, o.kind, problems, o.where())
        if not NAME_RE.match(str(o.name)) or len(str(o.name)) > 63:
            problems.add(o.where(), f"metadata.name {o.name!r} is not a DNS-1123 label")
    seen = {}
    for o in objs:
        key = (o.kind, o.ns, o.name)
        if key in seen:
            problems.add(o.where(), f"also defined at {seen[key]}")
        seen[key] = o.origin


# ---- the pods and what they refer to ----

class Pod:
    """The pod template of a workload."""

    def __init__(self, owner):
        self.owner = owner
        tmpl = owner.doc["spec"].get("template") or {}
        self.labels = (tmpl.get("metadata") or {}).get("labels") or {}
        self.spec = tmpl.get("spec") or {}
        self.ns = owner.ns
        self.containers = self.spec.get("containers") or []
        self.claims = [(v.get("metadata") or {}).get("name")
                       for v in owner.doc["spec"].get("volumeClaimTemplates") or []]

    def where(self, container=None):
        return self.owner.where() + (f": container {container.get('name')}" if container else "")

    def sample_name(self):
        """The name of the workload's first pod (StatefulSet: NAME-0)."""
        return f"{self.owner.name}-0"


class World:
    def __init__(self, objs):
        self.objs = [o for o in objs if isinstance(o.doc.get("metadata"), dict)]
        self.pods = [Pod(o) for o in self.objs
                     if o.kind in ("StatefulSet", "Deployment", "Job") and
                     isinstance(o.doc.get("spec"), dict)]
        self.flags = {}  # (pod owner name, container name) -> {flag: [expanded values]}

    def get(self, kind, ns, name):
        for o in self.objs:
            if o.kind == kind and o.name == name and (o.kind in CLUSTER_SCOPED or o.ns == ns):
                return o
        return None

    def of_kind(self, kind):
        return [o for o in self.objs if o.kind == kind]

    def selected(self, selector, ns):
        return [p for p in self.pods if p.ns == ns and selects(selector, p.labels)]


def selects(selector, labels):
    """A Service's map, or a LabelSelector's matchLabels and matchExpressions."""
    if not selector:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
        for e in selector.get("matchExpressions") or []:
            has, val = e.get("key") in labels, labels.get(e.get("key"))
            ok = ok and {"In": has and val in (e.get("values") or []),
                         "NotIn": not has or val not in (e.get("values") or []),
                         "Exists": has, "DoesNotExist": not has}.get(e.get("operator"), False)
        return ok
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(pod, ref, container=None):
    """The containerPort number a Service/NetworkPolicy/probe port (name or number) reaches."""
    for c in [container] if container else pod.containers:
        for p in c.get("ports") or []:
            if ref == p.get("name") or ref == p.get("containerPort"):
                return p.get("containerPort")
    return None


def check_workloads(world, problems):
    for p in world.pods:
        o, spec = p.owner, p.owner.doc["spec"]
        sel = spec.get("selector")
        if o.kind != "Job" and not selects(sel, p.labels):
            problems.add(o.where(), f"spec.selector {sel} does not select its own pod template "
                                    f"(labels {p.labels})")
        if o.kind == "StatefulSet":
            check_governing_service(world, p, spec.get("serviceName"), problems)
        for q in world.pods:
            if q is not p and q.ns == p.ns and o.kind != "Job" and selects(sel, q.labels):
                problems.add(o.where(), f"its selector also selects the pods of {q.owner.kind}/"
                                        f"{q.owner.name}")


def check_governing_service(world, pod, name, problems):
    svc = world.get("Service", pod.ns, name)
    if not svc:
        problems.add(pod.where(), f"serviceName {name!r}: no such Service")
    elif (svc.doc.get("spec") or {}).get("clusterIP") != "None":
        problems.add(pod.where(), f"serviceName {name!r} is not a headless Service (clusterIP: None)")
    elif not selects((svc.doc.get("spec") or {}).get("selector"), pod.labels):
        problems.add(pod.where(), f"serviceName {name!r}: that Service does not select its pods")


def check_services(world, problems):
    for svc in world.of_kind("Service"):
        spec = svc.doc.get("spec") or {}
        pods = world.selected(spec.get("selector"), svc.ns)
        if not pods:
            problems.add(svc.where(), f"selector {spec.get('selector')} selects no pod template")
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for p in pods:
                if container_port(p, target) is None:
                    problems.add(svc.where(), f"port {port.get('name', port.get('port'))}: "
                                              f"targetPort {target!r} is no containerPort of "
                                              f"{p.owner.kind}/{p.owner.name}")


def check_network_policies(world, problems):
    for np in world.of_kind("NetworkPolicy"):
        spec = np.doc.get("spec") or {}
        pods = world.selected(spec.get("podSelector"), np.ns)
        if not pods:
            problems.add(np.where(), "spec.podSelector selects no pod template")
        for i, rule in enumerate(spec.get("ingress") or []):
            for peer in rule.get("from") or []:
                if "podSelector" in peer and "namespaceSelector" not in peer and \
                        not world.selected(peer["podSelector"], np.ns):
                    problems.add(np.where(), f"ingress[{i}]: from podSelector "
                                             f"{peer['podSelector']} selects no pod template")
            for port in rule.get("ports") or []:
                for p in pods:
                    if "port" in port and container_port(p, port["port"]) is None:
                        problems.add(np.where(), f"ingress[{i}]: port {port['port']!r} is no "
                                                 f"containerPort of {p.owner.kind}/{p.owner.name}")


def check_probes(pod, c, problems):
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind) or {}
        for action in ("grpc", "httpGet", "tcpSocket"):
            port = (probe.get(action) or {}).get("port")
            if port is not None and container_port(pod, port, c) is None:
                problems.add(pod.where(c), f"{kind}.{action}.port {port!r} is no containerPort of it")


def keys_of(obj):
    d = obj.doc
    return set(d.get("data") or {}) | set(d.get("stringData") or {}) | set(d.get("binaryData") or {})


def check_volumes(world, pod, problems):
    volumes = {v.get("name"): v for v in pod.spec.get("volumes") or []}
    used = set()
    for c in pod.containers:
        for m in c.get("volumeMounts") or []:
            used.add(m.get("name"))
            if m.get("name") not in volumes and m.get("name") not in pod.claims:
                problems.add(pod.where(c), f"volumeMount {m.get('name')!r}: no such volume or "
                                           f"volumeClaimTemplate")
    for name in sorted((set(volumes) | set(pod.claims)) - used):
        problems.add(pod.where(), f"volume {name!r} is mounted by no container")
    for name, v in volumes.items():
        check_volume_source(world, pod, name, v, problems)


def check_volume_source(world, pod, name, v, problems):
    for field, kind, ref in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name"),
                             ("persistentVolumeClaim", "PersistentVolumeClaim", "claimName")):
        if field not in v:
            continue
        target = world.get(kind, pod.ns, v[field].get(ref))
        if not target and v[field].get("optional"):
            continue  # mounted where it exists (the TLS CA, with deploy/k8s/tls)
        if not target:
            problems.add(pod.where(), f"volume {name!r}: {kind} {v[field].get(ref)!r} is not "
                                      f"among the manifests")
            continue
        for item in v[field].get("items") or []:
            if item.get("key") not in keys_of(target):
                problems.add(pod.where(), f"volume {name!r}: {kind} {target.name} has no key "
                                          f"{item.get('key')!r}")
    if "hostPath" in v:
        problems.add(pod.where(), f"volume {name!r}: hostPath (not allowed by the restricted profile)")


def mount_of(pod, c, path):
    """(mount, volume or None) under which an absolute path lies: the deepest mountPath."""
    best = None
    for m in c.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (not best or len(mp) > len(best[0]["mountPath"])):
            best = (m, next((v for v in pod.spec.get("volumes") or [] if v.get("name") == m.get("name")),
                            None))
    return best


def check_path_keys(world, pod, c, tokens, problems):
    """A file named under a Secret or ConfigMap mount must be one of its keys."""
    for t in tokens:
        if not t.startswith("/"):
            continue
        found = mount_of(pod, c, t)
        if not found or not found[1]:
            continue
        m, v = found
        rest = t[len(m["mountPath"].rstrip("/")) + 1:]
        for field, kind, ref in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            target = world.get(kind, pod.ns, v[field].get(ref)) if field in v else None
            if target and rest:
                items = {i.get("path"): i.get("key") for i in v[field].get("items") or []}
                keys = set(items) if items else keys_of(target)
                if rest not in keys:
                    problems.add(pod.where(c), f"{t}: {kind} {target.name} (mounted at "
                                               f"{m['mountPath']}) has no key {rest!r} "
                                               f"(it has {sorted(keys)})")


def check_writable(pod, c, path, what, problems):
    found = mount_of(pod, c, path)
    if not found:
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            problems.add(pod.where(c), f"{what} {path}: on the read-only root filesystem (no "
                                       f"volume is mounted there)")
        return
    m, v = found
    if m.get("readOnly") or (v and not ("emptyDir" in v or "persistentVolumeClaim" in v or
                                        "ephemeral" in v)):
        problems.add(pod.where(c), f"{what} {path}: its volume {m.get('name')!r} is not writable")


def check_env_refs(world, pod, c, problems):
    for e in c.get("env") or []:
        src = e.get("valueFrom") or {}
        for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if field in src:
                t = world.get(kind, pod.ns, src[field].get("name"))
                if not t or src[field].get("key") not in keys_of(t):
                    problems.add(pod.where(c), f"env {e.get('name')}: {kind} {src[field].get('name')!r}"
                                               f" key {src[field].get('key')!r} is not among the manifests")
        fp = (src.get("fieldRef") or {}).get("fieldPath", "")
        m = re.match(r"metadata\.labels\['(.*)'\]$", fp)
        if m and m.group(1) not in pod.labels:
            problems.add(pod.where(c), f"env {e.get('name')}: the pod has no label {m.group(1)!r}")
        rf = src.get("resourceFieldRef")
        if rf:
            owner = next((x for x in pod.containers if x.get("name") == rf.get("containerName", c.get("name"))), None)
            kind, _, res = rf.get("resource", "").partition(".")
            if owner is None or res not in ((owner.get("resources") or {}).get(kind) or {}):
                problems.add(pod.where(c), f"env {e.get('name')}: {rf.get('resource')} is not set "
                                           f"on container {rf.get('containerName', c.get('name'))!r}"
                                           f" (it would be the node's)")


def check_security(pod, problems):
    ps = pod.spec.get("securityContext") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.spec.get(f):
            problems.add(pod.where(), f"{f}: true")
    if pod.spec.get("automountServiceAccountToken") is not False:
        problems.add(pod.where(), "automountServiceAccountToken is not false (moed never calls "
                                  "the Kubernetes API)")
    for c in pod.containers:
        cs = c.get("securityContext") or {}
        merged = {**ps, **cs}
        if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
            problems.add(pod.where(c), "does not run as non-root (runAsNonRoot: true)")
        if (merged.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.add(pod.where(c), "no seccompProfile RuntimeDefault")
        if cs.get("allowPrivilegeEscalation") is not False or cs.get("privileged"):
            problems.add(pod.where(c), "allowPrivilegeEscalation is not false")
        caps = cs.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problems.add(pod.where(c), "capabilities: not drop [ALL] (and add nothing)")
        if cs.get("readOnlyRootFilesystem") is not True:
            problems.add(pod.where(c), "readOnlyRootFilesystem is not true")
        res = c.get("resources") or {}
        missing = [f"requests.{r}" for r in ("cpu", "memory") if r not in (res.get("requests") or {})]
        missing += ["limits.memory"] if "memory" not in (res.get("limits") or {}) else []
        if missing:
            problems.add(pod.where(c), f"resources without {', '.join(missing)}")


# ---- the command lines ----

# What these manifests must give besides what --help calls required: tokens on the coordinator
REQUIRED_HERE = {"moed-coordinator": ("client-token-file", "cluster-token-file")}


class Help:
    """What a binary's --help says: flags (metavar, or None for a switch), their bounds, the
    required ones (outside [] in the usage line), and the whole text."""

    def __init__(self, path):
        self.text = subprocess.run([path, "--help"], capture_output=True, text=True,
                                   timeout=30).stdout
        self.flags, self.bounds, self.required = {}, {}, set()
        current = None
        for line in self.text.splitlines():
            m = re.match(r"^  --([a-z0-9-]+)(?: (\S+))?", line)
            if m:
                current = m.group(1)
                self.flags[current] = m.group(2)
            elif not line.startswith("    "):
                current = None
            b = re.search(r"(-?\d+)\.\.(-?\d+)", line)
            if current and b:
                self.bounds[current] = (int(b.group(1)), int(b.group(2)))
        usage = re.search(r"^usage: \S+ (.*)$", self.text, re.M)
        if usage:
            self.required = set(re.findall(r"--([a-z0-9-]+)", re.sub(r"\[[^\]]*\]", "", usage.group(1))))


def quantity(q):
    m = re.match(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$", str(q))
    if not m:
        return None
    mult = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
            "T": 1e12, "m": 1e-3, None: 1}[m.group(2)]
    return float(m.group(1)) * mult


def env_values(pod, c):
    """NAME -> the value the container would see (None: not known offline)."""
    out = {}
    for e in c.get("env") or []:
        src = e.get("valueFrom") or {}
        fp = (src.get("fieldRef") or {}).get("fieldPath", "")
        label = re.match(r"metadata\.labels\['(.*)'\]$", fp)
        rf = src.get("resourceFieldRef")
        if "value" in e:
            out[e["name"]] = str(e["value"])
        elif fp in ("metadata.name", "metadata.namespace"):
            out[e["name"]] = pod.sample_name() if fp == "metadata.name" else pod.ns
        elif label:
            out[e["name"]] = pod.labels.get(label.group(1))
        elif rf:
            owner = next((x for x in pod.containers if x.get("name") == rf.get("containerName", c.get("name"))), c)
            kind, _, res = rf.get("resource", "").partition(".")
            q = quantity(((owner.get("resources") or {}).get(kind) or {}).get(res))
            d = quantity(rf.get("divisor", "1"))
            out[e["name"]] = str(-int(-q // d)) if q and d else None
        else:
            out[e["name"]] = None
    return out


def expand(value, env, where, problems):
    """Kubernetes' $(VAR) expansion of an argument; $$ is a literal $."""
    parts = re.split(r"(\$\$)", str(value))
    out = []
    for part in parts:
        if part == "$$":
            out.append("$")
            continue
        for name in VAR_RE.findall(part):
            if name not in env:
                problems.add(where, f"$({name}) in {value!r}: no such variable in the container's env "
                                    f"(Kubernetes would pass it on as it is)")
        out.append(VAR_RE.sub(lambda m: env.get(m.group(1)) or m.group(0), part))
    return "".join(out)


def parse_flags(args, help_, where, problems):
    """flag -> [values] ("" for a switch), as the daemon's getopt_long would take them."""
    got, i = {}, 0
    while i < len(args):
        a = str(args[i])
        name, eq, val = a[2:].partition("=")
        if not a.startswith("--"):
            problems.add(where, f"unexpected argument {a!r} (the daemons take only flags)")
        elif name not in help_.flags:
            near = difflib.get_close_matches(name, list(help_.flags), 1)
            problems.add(where, f"--{name}: not a flag of this binary's --help" +
                         (f" (did you mean --{near[0]}?)" if near else ""))
            if not eq and i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                i += 1  # its value, presumably: what follows is then read correctly
        elif help_.flags[name] is None:
            got.setdefault(name, []).append("")
            if eq:
                problems.add(where, f"--{name} takes no value")
        else:
            if not eq:
                i += 1
                if i >= len(args):
                    problems.add(where, f"--{name} needs a value ({help_.flags[name]})")
                    break
                val = str(args[i])
            got.setdefault(name, []).append(val)
        i += 1
    return got


def check_values(flags, help_, binary, where, problems):
    for name in sorted((help_.required | set(REQUIRED_HERE.get(binary, ()))) - set(flags)):
        problems.add(where, f"--{name} is required here")
    for name, values in flags.items():
        meta = help_.flags.get(name) or ""
        for v in values:
            if "|" in meta and v not in meta.split("|"):
                problems.add(where, f"--{name} {v}: must be one of {meta}")
            if name in help_.bounds and "$(" not in v:
                lo, hi = help_.bounds[name]
                if not re.match(r"^-?\d+$", v) or not lo <= int(v) <= hi:
                    problems.add(where, f"--{name} {v}: must be an integer in {lo}..{hi}")
            if meta in ("HOST:PORT", "HOST[:PORT]") and \
                    not re.match(r"^[^\s:]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$", v) and \
                    not (meta == "HOST[:PORT]" and re.match(r"^[^\s:]+$", v)):
                problems.add(where, f"--{name} {v}: not {meta}")


def port_of(hostport):
    m = re.match(r"^(.*):(\d+)$", hostport or "")
    return (m.group(1), int(m.group(2))) if m else (None, None)


def check_daemon(world, pod, c, helps, problems):
    binary = os.path.basename((c.get("command") or [""])[0])
    where = pod.where(c)
    env = env_values(pod, c)
    args = [expand(a, env, where, problems) for a in c.get("args") or []]
    flags = parse_flags(args, helps[binary], where, problems)
    world.flags[(pod.owner.name, c.get("name"))] = flags
    check_values(flags, helps[binary], binary, where, problems)
    check_env_names(c, helps[binary], where, problems)
    check_path_keys(world, pod, c, [v for vs in flags.values() for v in vs], problems)
    for name in WRITTEN_FLAGS:
        for v in flags.get(name, []):
            check_writable(pod, c, v, f"--{name}", problems)
    if "TMPDIR" in env and env["TMPDIR"]:
        check_writable(pod, c, env["TMPDIR"], "TMPDIR", problems)
    listening = {port_of(v)[1]: f for f in LISTEN_FLAGS for v in flags.get(f, [])}
    declared = {p.get("containerPort") for p in c.get("ports") or []}
    for port in sorted(set(listening) - declared):
        problems.add(where, f"--{listening[port]} port {port} is not among its containerPorts")
    for port in sorted(declared - set(listening)):
        problems.add(where, f"containerPort {port}: the daemon listens on no such port "
                            f"(its --listen flags: {sorted(p for p in listening if p)})")
    grpc_port = port_of((flags.get("listen") or [""])[-1])[1]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = ((c.get(kind) or {}).get("grpc") or {}).get("port")
        if port is not None and port != grpc_port:
            problems.add(where, f"{kind}.grpc.port {port} is not its gRPC --listen port {grpc_port}")
        if port is not None and flags.get("tls-cert"):
            problems.add(where, f"{kind}.grpc with --tls-cert: Kubernetes' gRPC probe speaks "
                                f"plaintext only, and would fail (use tcpSocket)")
    if binary == "moed-worker":
        check_advertised(world, pod, c, flags, helps[binary], problems)


def names_in(name, text):
    return re.search(r"(?<![A-Z0-9_])" + re.escape(name) + r"(?![A-Z0-9_])", text) is not None


def check_env_names(c, help_, where, problems):
    for e in c.get("env") or []:
        if re.match(r"^MOED?_", e.get("name", "")) and not names_in(e["name"], help_.text):
            problems.add(where, f"env {e['name']}: a moed variable its --help does not name")


def check_advertised(world, pod, c, flags, help_, problems):
    """Listening everywhere, a worker must advertise its own stable DNS name (with the port it
    listens on, where the flag takes a port: HOST[:PORT] or HOST:PORT; none where it is HOST)."""
    where = pod.where(c)
    service = pod.owner.doc["spec"].get("serviceName")
    for adv, listen in ADVERTISED.items():
        if listen not in flags:
            continue
        host, port = port_of(flags[listen][-1])
        if adv not in flags:
            if host in ("0.0.0.0", "[::]", "::", ""):
                problems.add(where, f"--{listen} {flags[listen][-1]} without --{adv}: it would "
                                    f"announce 127.0.0.1 or its bare hostname, which other pods "
                                    f"cannot reach")
            continue
        value, meta = flags[adv][-1], help_.flags.get(adv) or ""
        ahost, aport = port_of(value)
        if ahost is None:
            ahost = value
        elif meta == "HOST":
            problems.add(where, f"--{adv} {value}: takes a host ({meta}), not a port")
        if aport is not None and aport != port:
            problems.add(where, f"--{adv} port {aport} is not its --{listen} port {port}")
        own = f"{pod.sample_name()}.{service}.{pod.ns}.svc"
        if pod.owner.kind != "StatefulSet" or ahost not in (own, own + ".cluster.local"):
            problems.add(where, f"--{adv} {value}: not the pod's own DNS name "
                                f"($(POD_NAME).{service}.$(POD_NAMESPACE).svc, here {own})")
        svc = world.get("Service", pod.ns, service)
        if svc and not (svc.doc.get("spec") or {}).get("publishNotReadyAddresses"):
            problems.add(svc.where(), "publishNotReadyAddresses is not true: a worker's name "
                                      "would not resolve until it is ready, but the coordinator "
                                      "dials it as soon as it registers")


def check_dial(world, pod, value, what, where, problems):
    """HOST:PORT of a Service here: it must have that port, reaching a daemon's --listen port."""
    host, port = port_of(value)
    name = (host or "").split(".")[0]
    rest = (host or "").split(".")[1:]
    if rest not in ([], [pod.ns], [pod.ns, "svc"], [pod.ns, "svc", "cluster", "local"]):
        return  # outside the namespace: not ours to check
    svc = world.get("Service", pod.ns, name)
    if not svc:
        problems.add(where, f"{what} {value}: no Service {name!r} among the manifests")
        return
    ports = [p for p in (svc.doc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
    if not ports:
        problems.add(where, f"{what} {value}: Service {name} has no port {port}")
        return
    target = ports[0].get("targetPort", port)
    for p in world.selected((svc.doc.get("spec") or {}).get("selector"), pod.ns):
        for c in p.containers:
            flags = world.flags.get((p.owner.name, c.get("name")))
            cport = container_port(p, target, c)
            if flags is not None and cport is not None and \
                    cport != port_of((flags.get("listen") or [""])[-1])[1]:
                problems.add(where, f"{what} {value}: Service {name} port {port} reaches "
                                    f"{p.owner.name}'s port {cport}, not its gRPC --listen port")


def shell_words(c):
    """The words of the container's command line; an `sh -c SCRIPT`'s script split as sh would."""
    words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
    if len(words) >= 3 and os.path.basename(words[0]) in ("sh", "bash") and words[1] == "-c":
        script = words[2].replace("$$", "$")
        return shlex.split(re.sub(r"[;&|()`]", " ", script)), True
    return words, False


def check_moectl(world, pod, c, help_, problems):
    """moectl's subcommands and variables, and the files and coordinator it is given."""
    where = pod.where(c)
    words, _ = shell_words(c)
    # a command's line: its name, then its arguments ([--flag], SPEC, JOB), a cluster verb or
    # two spaces and what it does
    commands = set(re.findall(r"^  ([a-z]+)(?:$| {2,}| [A-Z\[]| (?:up|down|status)\b)",
                              help_.text, re.M))
    for i, w in enumerate(words):
        if os.path.basename(w) == "moectl" and (i + 1 >= len(words) or words[i + 1] not in commands):
            problems.add(where, f"moectl {words[i + 1] if i + 1 < len(words) else ''}: not a "
                                f"command of moectl's help ({sorted(commands)})")
    env = env_values(pod, c)
    for name in env:
        if re.match(r"^MOED?_", name) and not names_in(name, help_.text):
            problems.add(where, f"env {name}: a variable moectl's help does not name")
    check_path_keys(world, pod, c, [w for w in words if w.startswith("/")] +
                    [v for v in env.values() if v and v.startswith("/")], problems)
    if env.get("MOED_COORDINATOR"):
        check_dial(world, pod, env["MOED_COORDINATOR"], "MOED_COORDINATOR", where, problems)


def uses(c, binary):
    words, _ = shell_words(c)
    return any(os.path.basename(w) == binary for w in words)


def check_worker_sets(world, problems):
    """One StatefulSet per pod of the mesh, alike but for their names and pod label."""
    sets = [p for p in world.pods if any(uses(c, "moed-worker") for c in p.containers)]
    if not sets:
        problems.add("manifests", "no workload runs moed-worker")
        return sets
    labels = [p.labels.get(POD_LABEL) for p in sets]
    if sorted(labels, key=str) != [str(i) for i in range(len(sets))]:
        problems.add("manifests", f"the worker workloads' {POD_LABEL} labels are {labels}, not "
                                  f"0..{len(sets) - 1}, one each")
    base = normalized(sets[0])
    for p in sets[1:]:
        other = normalized(p)
        if other != base:
            diff = "\n".join(list(difflib.unified_diff(yaml.safe_dump(base).splitlines(),
                                                       yaml.safe_dump(other).splitlines(),
                                                       lineterm="", n=0))[2:8])
            problems.add(p.owner.where(), f"differs from {sets[0].owner.name} in more than its "
                                          f"name and {POD_LABEL} label:\n{diff}")
    for p in sets:
        for c in p.containers:
            got = (world.flags.get((p.owner.name, c.get("name"))) or {}).get("pod")
            if got and got[-1] != p.labels.get(POD_LABEL):
                problems.add(p.where(c), f"--pod {got[-1]} is not its {POD_LABEL} label "
                                         f"{p.labels.get(POD_LABEL)!r}")
    return sets


def normalized(pod):
    doc = copy.deepcopy(pod.owner.doc)
    doc["metadata"]["name"] = "X"
    doc["spec"].pop("replicas", None)  # a pod may have a spare more than another
    for labels in (doc["metadata"].get("labels"), (doc["spec"].get("selector") or {}).get("matchLabels"),
                   ((doc["spec"].get("template") or {}).get("metadata") or {}).get("labels")):
        if labels and POD_LABEL in labels:
            labels[POD_LABEL] = "X"
    return doc


def check_job_spec(world, sets, problems):
    """The spec a Job submits: its mesh fits the worker StatefulSets, its data their roots."""
    for pod in world.pods:
        for c in pod.containers:
            words, _ = shell_words(c)
            for i, w in enumerate(words[:-2]):
                if os.path.basename(w) == "moectl" and words[i + 1] == "submit":
                    spec = file_content(world, pod, c, words[i + 2])
                    if spec is None:
                        problems.add(pod.where(c), f"moectl submit {words[i + 2]}: not a file "
                                                   f"of a ConfigMap or Secret among the manifests")
                    else:
                        check_spec_fits(yaml.safe_load(spec) or {}, sets, world,
                                        pod.where(c) + f": {words[i + 2]}", problems)


def file_content(world, pod, c, path):
    found = mount_of(pod, c, path)
    if not found or not found[1] or "configMap" not in found[1]:
        return None
    cm = world.get("ConfigMap", pod.ns, found[1]["configMap"].get("name"))
    key = path[len(found[0]["mountPath"].rstrip("/")) + 1:]
    return (cm.doc.get("data") or {}).get(key) if cm else None


def check_spec_fits(spec, sets, world, where, problems):
    mesh = spec.get("mesh") or {}
    pods, slots = mesh.get("pods", 1), mesh.get("slots", 1)
    if pods > len(sets):
        problems.add(where, f"mesh.pods {pods}: only {len(sets)} worker StatefulSets")
    for p in sets:
        if (p.owner.doc["spec"].get("replicas", 1) or 0) < slots:
            problems.add(where, f"mesh.slots {slots}: {p.owner.name} has "
                                f"{p.owner.doc['spec'].get('replicas', 1)} replicas")
    for p in sets:
        roots = [r.rstrip("/") for c in p.containers
                 for r in (world.flags.get((p.owner.name, c.get("name"))) or {}).get("data-root", [])]
        for src in (spec.get("data") or {}).get("sources") or []:
            path = str(src.get("path", ""))
            if not any(path == r or path.startswith(r + "/") for r in roots):
                problems.add(where, f"data source {path}: under no --data-root of "
                                    f"{p.owner.name} ({roots})")


# ---- the image ----

IMAGE_BINARIES = ("moed-coordinator", "moed-worker", "moectl")


def runtime_packages(dockerfile):
    """The packages the Dockerfile's last stage installs with apt-get, and the binaries it copies."""
    text = re.sub(r"\\\n", " ", open(dockerfile).read())
    stage = re.split(r"^FROM\s", text, flags=re.M)[-1]
    pkgs, copied = set(), set()
    for line in stage.splitlines():
        m = re.search(r"apt-get install ([^&>|;]*)", line)
        if line.startswith("RUN") and m:
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
        if line.startswith("COPY") and "--from=" in line:
            copied |= {os.path.basename(w) for w in line.split()[2:-1]}
    return pkgs, copied


def installed_depends():
    """package -> the packages it depends on (first installed alternative), from dpkg."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Pre-Depends}, ${Depends}\n"],
                         capture_output=True, text=True).stdout
    deps = {}
    for line in out.splitlines():
        name, _, rest = line.partition("\t")
        firsts = [d.split("|")[0].split() for d in rest.split(",") if d.strip()]
        deps[name] = [re.sub(r":.*", "", f[0]) for f in firsts if f]
    return deps


def closure(roots, deps):
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += deps.get(p, [])
    return seen


def linked_libraries(bindir):
    """The real paths of the shared libraries the image's binaries load, as built here."""
    libs = set()
    for b in IMAGE_BINARIES:
        out = subprocess.run(["ldd", os.path.join(bindir, b)], capture_output=True, text=True).stdout
        libs |= {os.path.realpath(m) for m in re.findall(r"=> (/\S+)", out)}
    return libs


def sanitized(bindir):
    """A sanitizer build links libasan/libubsan, which the image (a release build) never has."""
    return any(re.match(r"lib(a|ub|t)san", os.path.basename(lib)) for lib in linked_libraries(bindir))


def image_problems(dockerfile, bindir):
    """Every shared library the built binaries load comes from a package that the image's
    runtime stage installs, or that one of those (or apt, in every Debian image) depends on;
    and the runtime stage copies the three binaries."""
    problems = Problems()
    pkgs, copied = runtime_packages(dockerfile)
    for b in sorted(set(IMAGE_BINARIES) - copied):
        problems.add(dockerfile, f"the runtime stage does not copy {b}")
    libs = linked_libraries(bindir)
    owners = {}  # dpkg may know a library by its path before /usr was merged (/lib/...)
    asked = sorted(libs | {lib[4:] for lib in libs if lib.startswith("/usr/lib/")})
    for line in subprocess.run(["dpkg", "-S"] + asked, capture_output=True,
                               text=True).stdout.splitlines():
        pkg, _, path = line.partition(": ")
        for lib in (path, "/usr" + path):
            owners[lib] = pkg.split(":")[0].split(",")[0]
    have = closure(pkgs | {"apt"}, installed_depends())
    for lib in sorted(libs):
        if lib not in owners:
            print(f"note: {lib} (linked by the build here) is no Debian package's: not checked")
        elif owners[lib] not in have:
            problems.add(dockerfile, f"{lib} (package {owners[lib]}) is linked by the binaries "
                                     f"but the runtime stage does not install it")
    return problems.lines


# ---- all of it ----

def validate(dirs, bindir):
    """Every object the kustomizations in dirs render, together (one deployment)."""
    problems = Problems()
    objs = []
    for d in dirs:
        if not os.path.isfile(os.path.join(d, "kustomization.yaml")):
            problems.add(d, "no kustomization.yaml")
        else:
            objs += render(d, problems)
    check_models(objs, problems)
    world = World(objs)
    namespaces = {o.name for o in world.of_kind("Namespace")}
    for o in world.objs:
        if o.kind not in CLUSTER_SCOPED and o.ns not in namespaces:
            problems.add(o.where(), f"namespace {o.ns!r}: no such Namespace among the manifests")
    check_workloads(world, problems)
    check_services(world, problems)
    check_network_policies(world, problems)
    helps = {b: Help(os.path.join(bindir, b)) for b in DAEMONS + ("moectl",)}
    for pod in world.pods:
        check_volumes(world, pod, problems)
        check_security(pod, problems)
        for c in pod.containers:
            check_probes(pod, c, problems)
            check_env_refs(world, pod, c, problems)
            binary = os.path.basename((c.get("command") or [""])[0])
            if binary in DAEMONS:
                check_daemon(world, pod, c, helps, problems)
    for pod in world.pods:  # once every daemon's flags are known
        for c in pod.containers:
            flags = world.flags.get((pod.owner.name, c.get("name"))) or {}
            binary = os.path.basename((c.get("command") or [""])[0])
            for name in DIAL_FLAGS.get(binary, ()):
                for v in flags.get(name, []):
                    check_dial(world, pod, v, f"--{name}", pod.where(c), problems)
            if uses(c, "moectl"):
                check_moectl(world, pod, c, helps["moectl"], problems)
    check_job_spec(world, check_worker_sets(world, problems), problems)
    return objs, problems.lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(os.environ.get("MOE_BUILD_DIR", "build"), "bin"),
                    help="where the built moed-coordinator, moed-worker and moectl are")
    ap.add_argument("--dockerfile", help="also check that the image installs every library the "
                                         "built binaries link (deploy/docker/Dockerfile)")
    ap.add_argument("dirs", nargs="+", metavar="DIR",
                    help="kustomizations applied together (deploy/k8s deploy/k8s/submit)")
    a = ap.parse_args()
    for b in DAEMONS + ("moectl",):
        if not os.access(os.path.join(a.bin, b), os.X_OK):
            print(f"k8s_validate: {os.path.join(a.bin, b)} is not built", file=sys.stderr)
            return 2
    objs, lines = validate(a.dirs, a.bin)
    lines += image_problems(a.dockerfile, a.bin) if a.dockerfile else []
    for line in lines:
        print(line)
    print(f"k8s_validate: {len(objs)} objects in {' '.join(a.dirs)}: " +
          (f"{len(lines)} problems" if lines else "all checks hold"))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
