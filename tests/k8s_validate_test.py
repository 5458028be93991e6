#!/usr/bin/python3
"""Proves tests/k8s_validate.py can fail, check by check, and that it reads kustomize right.

    k8s_validate_test.py --bin BUILD/bin DIR

1. DIR (deploy/k8s) as it is, both ways it is deployed: DIR (that is, DIR/base) with DIR/submit
   (plaintext) and DIR/tls with DIR/submit (TLS): no problem.
2. Each mutation below, applied to a copy of DIR, one at a time: the validator must report
   the problem named (a line containing the expected text). A check that cannot fail shows
   up here as a mutation it did not catch.
3. deploy/docker/Dockerfile's runtime stage installs every library the built binaries link,
   and a copy missing one (or missing a binary) is caught.
4. Where kubectl is installed (not on a fresh CI machine, so optional): `kubectl kustomize`
   of each kustomization renders the same objects as the validator's own rendering, with
   made-up tokens in place of the secrets.
Exit 0 when all hold; 1 otherwise, naming each failure.
"""
import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8s_validate  # noqa: E402


def coord(d):  # the coordinator StatefulSet's container (coordinator.yaml, document 3)
    return d[2]["spec"]["template"]["spec"]["containers"][0]


def worker(d, i=1):  # the worker container of moed-pod-<i-1> (workers.yaml, documents 2 and 3)
    return d[i]["spec"]["template"]["spec"]["containers"][0]


def set_arg(c, flag, value):
    a = c["args"]
    a[a.index(flag) + 1] = value


def drop_arg(c, flag):
    a = c["args"]
    i = a.index(flag)
    del a[i:i + 2]


def both_workers(fn):
    """The same change to both worker StatefulSets (so that they stay alike)."""
    return lambda d: (fn(worker(d, 1)), fn(worker(d, 2)))


def env_drop(c, name):
    c["env"] = [e for e in c["env"] if e["name"] != name]


C, W, N, K, S, J, SPEC = ("base/coordinator.yaml", "base/workers.yaml", "base/networkpolicy.yaml",
                          "base/kustomization.yaml", "submit/kustomization.yaml", "submit/job.yaml",
                          "submit/spec.yaml")
MUTATIONS = [
    # the typed models
    ("a misspelt field", C, lambda d: d[2]["spec"].update(replica=1), "unknown field 'replica'"),
    ("a misspelt probe field", C, lambda d: coord(d)["readinessProbe"]["grpc"].update(prot=1),
     "grpc: unknown field 'prot'"),
    ("a number as a string", C, lambda d: d[2]["spec"].update(replicas="1"), "int expected"),
    ("a label value as a number", C, lambda d: d[0]["metadata"]["labels"].update(x=1),
     "str expected"),
    ("a container without its name", C, lambda d: coord(d).pop("name"), "`name`, must not be `None`"),
    ("a gRPC probe without its port", C, lambda d: coord(d)["livenessProbe"]["grpc"].pop("port"),
     "grpc.port: required"),
    ("an unknown kind", N, lambda d: d[0].update(kind="NetworkPolicie"), "not one this validator knows"),
    ("a name that is no DNS label", N, lambda d: d[0]["metadata"].update(name="Moed_Coordinator"),
     "is not a DNS-1123 label"),
    ("an object twice", N, lambda d: d[1]["metadata"].update(name="moed-coordinator"), "also defined at"),
    # kustomize
    ("a kustomization field not rendered", K, lambda d: d[0].update(commonLabels={"a": "b"}),
     "does not render: ['commonLabels']"),
    ("a resource that does not exist", K, lambda d: d[0]["resources"].append("gone.yaml"),
     "resource gone.yaml: no such file"),
    ("a manifest no kustomization lists", K, lambda d: d[0]["resources"].remove("networkpolicy.yaml"),
     "networkpolicy.yaml is neither a resource"),
    ("generated names with a hash", K, lambda d: d[0].pop("generatorOptions"), "disableNameSuffixHash"),
    ("a namespace never created", S, lambda d: d[0].update(namespace="other"), "no such Namespace"),
    # names, labels and selectors
    ("a Service selecting nothing", C,
     lambda d: d[0]["spec"]["selector"].update({"app.kubernetes.io/component": "coord"}),
     "selects no pod template"),
    ("a selector missing its own template", C,
     lambda d: d[2]["spec"]["selector"]["matchLabels"].update(extra="x"),
     "does not select its own pod template"),
    ("a serviceName that does not exist", C, lambda d: d[2]["spec"].update(serviceName="moed-coord"),
     "serviceName 'moed-coord': no such Service"),
    ("a serviceName that is not headless", C,
     lambda d: d[2]["spec"].update(serviceName="moed-coordinator"), "is not a headless Service"),
    ("two StatefulSets selecting each other's pods", W,
     lambda d: d[2]["spec"]["selector"]["matchLabels"].pop("moed-pod"), "also selects the pods of"),
    # ports
    ("a Service targetPort no container has", C, lambda d: d[0]["spec"]["ports"][0].update(targetPort="gprc"),
     "targetPort 'gprc' is no containerPort"),
    ("a probe on a port not declared", C, lambda d: coord(d)["readinessProbe"]["grpc"].update(port=7071),
     "readinessProbe.grpc.port 7071 is no containerPort"),
    ("a gRPC probe on the HTTP port", C, lambda d: coord(d)["livenessProbe"]["grpc"].update(port=9464),
     "livenessProbe.grpc.port 9464 is not its gRPC --listen port"),
    ("a containerPort the daemon does not listen on", C,
     lambda d: coord(d)["ports"][1].update(containerPort=9465), "--http-listen port 9464 is not among"),
    ("a NetworkPolicy port no pod has", N, lambda d: d[0]["spec"]["ingress"][0]["ports"][0].update(port="rpc"),
     "port 'rpc' is no containerPort"),
    ("a NetworkPolicy selecting nothing", N,
     lambda d: d[1]["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/component": "workers"}),
     "spec.podSelector selects no pod template"),
    ("a NetworkPolicy peer selecting nothing", N,
     lambda d: d[0]["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"].update(
         {"app.kubernetes.io/component": "clients"}), "from podSelector"),
    # Secrets, ConfigMaps, volumes, env
    ("a Secret that is not generated", C,
     lambda d: d[2]["spec"]["template"]["spec"]["volumes"][0]["secret"].update(secretName="moed-client"),
     "Secret 'moed-client' is not among the manifests"),
    ("a token file that is not the Secret's key", C,
     lambda d: set_arg(coord(d), "--client-token-file", "/etc/moed/client/token"), "has no key 'token'"),
    ("a mount of no volume", C, lambda d: coord(d)["volumeMounts"][1].update(name="client"),
     "volumeMount 'client': no such volume"),
    ("a volume no container mounts", C,
     lambda d: d[2]["spec"]["template"]["spec"]["volumes"].append({"name": "x", "emptyDir": {}}),
     "volume 'x' is mounted by no container"),
    ("the spec's ConfigMap key renamed", S,
     lambda d: d[0]["configMapGenerator"][0].update(files=["spec.yaml"]), "moectl submit /etc/moed/spec/job.yaml"),
    ("a $(VAR) not defined", W, both_workers(lambda c: env_drop(c, "POD_NAMESPACE")),
     "$(POD_NAMESPACE)"),
    ("a label the downward API reads, missing", W,
     both_workers(lambda c: c["env"][2]["valueFrom"]["fieldRef"].update(fieldPath="metadata.labels['pod']")),
     "the pod has no label 'pod'"),
    ("a resource limit read but not set", W,
     both_workers(lambda c: c["resources"]["limits"].pop("cpu")), "limits.cpu is not set"),
    ("a store directory on the read-only root", W, both_workers(lambda c: set_arg(c, "--dir", "/var/lib/x")),
     "--dir /var/lib/x: on the read-only root filesystem"),
    ("a store on a read-only mount", C, lambda d: coord(d)["volumeMounts"][0].update(readOnly=True),
     "is not writable"),
    # the daemons' flags
    ("an unknown flag", C, lambda d: coord(d)["args"].__setitem__(2, "--listn"),
     "--listn: not a flag of this binary's --help"),
    ("a flag without its value", C, lambda d: coord(d)["args"].pop(), "--log-level needs a value"),
    ("a value outside the choices", C, lambda d: set_arg(coord(d), "--log-level", "verbose"),
     "must be one of debug|info|warn|error|off"),
    ("a number out of bounds", W, both_workers(lambda c: set_arg(c, "--threads", "0")),
     "--threads 0: must be an integer in 1.."),
    ("a required flag missing", W, both_workers(lambda c: drop_arg(c, "--cluster-token-file")),
     "--cluster-token-file is required"),
    ("the coordinator without its client token", C, lambda d: drop_arg(coord(d), "--client-token-file"),
     "--client-token-file is required here"),
    ("an address that is not HOST:PORT", C, lambda d: set_arg(coord(d), "--listen", "0.0.0.0"),
     "--listen 0.0.0.0: not HOST:PORT"),
    ("a worker listening everywhere unannounced", W, both_workers(lambda c: drop_arg(c, "--advertise")),
     "without --advertise"),
    ("an advertised port not listened on", W,
     both_workers(lambda c: set_arg(c, "--advertise", "$(POD_NAME).moed-workers.$(POD_NAMESPACE).svc:7099")),
     "--advertise port 7099 is not its --listen port 7071"),
    ("a port where the flag takes a host", W,
     both_workers(lambda c: set_arg(c, "--data-advertise", "$(POD_NAME).moed-workers.$(POD_NAMESPACE).svc:7072")),
     "takes a host (HOST), not a port"),
    ("a coordinator advertising a port that is not its gRPC port", C,
     lambda d: set_arg(coord(d), "--advertise", "moed-coordinator:9464"), "not its gRPC --listen port"),
    ("an advertised name of another Service", W,
     both_workers(lambda c: set_arg(c, "--advertise", "$(POD_NAME).moed-worker.$(POD_NAMESPACE).svc:7071")),
     "not the pod's own DNS name"),
    ("worker names that resolve only once ready", W, lambda d: d[0]["spec"].pop("publishNotReadyAddresses"),
     "publishNotReadyAddresses is not true"),
    ("a coordinator address with no Service", W,
     both_workers(lambda c: set_arg(c, "--coordinator", "moed-coord:7070")), "no Service 'moed-coord'"),
    ("a coordinator address on the HTTP port", W,
     both_workers(lambda c: set_arg(c, "--coordinator", "moed-coordinator:9464")),
     "not its gRPC --listen port"),
    ("a coordinator address on no port", W,
     both_workers(lambda c: set_arg(c, "--coordinator", "moed-coordinator:7071")), "has no port 7071"),
    ("--pod not the StatefulSet's label", W, both_workers(lambda c: set_arg(c, "--pod", "0")),
     "--pod 0 is not its moed-pod label '1'"),
    ("a moed variable the worker does not read", W,
     both_workers(lambda c: c["env"].append({"name": "MOED_DATA_ROOT", "value": "/x"})),
     "env MOED_DATA_ROOT: a moed variable"),
    # pod security
    ("a root filesystem that can be written", C,
     lambda d: coord(d)["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    ("capabilities kept", C, lambda d: coord(d)["securityContext"].pop("capabilities"), "capabilities"),
    ("root allowed", C, lambda d: d[2]["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
     "does not run as non-root"),
    ("no seccomp profile", C, lambda d: d[2]["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile"),
     "no seccompProfile"),
    ("privilege escalation allowed", C,
     lambda d: coord(d)["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("the API token mounted", C,
     lambda d: d[2]["spec"]["template"]["spec"].pop("automountServiceAccountToken"),
     "automountServiceAccountToken"),
    ("no resource requests", C, lambda d: coord(d)["resources"].pop("requests"),
     "resources without requests.cpu, requests.memory"),
    # the worker StatefulSets and the job
    ("worker StatefulSets that drifted apart", W, lambda d: set_arg(worker(d, 2), "--threads", "1"),
     "differs from moed-pod-0"),
    ("two StatefulSets for one pod of the mesh", W,
     lambda d: [x.update({"moed-pod": "0"}) for x in (d[2]["metadata"]["labels"],
                                                      d[2]["spec"]["selector"]["matchLabels"],
                                                      d[2]["spec"]["template"]["metadata"]["labels"])],
     "labels are ['0', '0']"),
    ("a mesh of more pods than StatefulSets", SPEC, lambda d: d[0]["mesh"].update(pods=3),
     "mesh.pods 3: only 2 worker StatefulSets"),
    ("a mesh of more slots than replicas", SPEC, lambda d: d[0]["mesh"].update(slots=3),
     "mesh.slots 3: moed-pod-0 has 2 replicas"),
    ("data outside the workers' roots", SPEC, lambda d: d[0]["data"]["sources"][0].update(path="/srv/data"),
     "data source /srv/data: under no --data-root"),
    ("a moectl command that does not exist", J,
     lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["args"].__setitem__(
         0, d[0]["spec"]["template"]["spec"]["containers"][0]["args"][0].replace("submit", "sumbit")),
     "moectl sumbit: not a command"),
    ("a moectl variable that does not exist", J,
     lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["env"][1].update(name="MOED_TOKENFILE"),
     "env MOED_TOKENFILE: a variable moectl's help does not name"),
    ("a client token file not in its Secret", J,
     lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["env"][1].update(
         value="/etc/moed/client/cluster.token"), "has no key 'cluster.token'"),
    ("a client that dials no Service", J,
     lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["env"][0].update(value="coordinator:7070"),
     "no Service 'coordinator'"),
]


def patch_ops(d, i, fn):
    """fn on the JSON 6902 operations of the overlay's patch i (kept as the inline text)."""
    ops = yaml.safe_load(d[0]["patches"][i]["patch"])
    fn(ops)
    d[0]["patches"][i]["patch"] = yaml.safe_dump(ops)


T = "tls/kustomization.yaml"
TLS = [  # on deploy/k8s/tls + submit
    ("a TLS daemon with a gRPC probe", T,
     lambda d: patch_ops(d, 0, lambda ops: ops.remove(next(o for o in ops if o["path"].endswith("readinessProbe")))),
     "readinessProbe.grpc with --tls-cert"),
    ("a certificate that is not its Secret's key", T,
     lambda d: d[0]["secretGenerator"][1]["files"].__setitem__(0, "cert.pem=secrets/worker.crt"),
     "has no key 'tls.crt'"),
    ("a patch of a path that is not there", T,
     lambda d: patch_ops(d, 1, lambda ops: ops[0].update(path="/spec/template/spec/containers/1/args/-")),
     "no such path"),
    ("a patch whose target matches nothing", T,
     lambda d: d[0]["patches"][0]["target"].update(name="moed-coord"), "matches no object"),
    ("an overlay that includes itself", T, lambda d: d[0]["resources"].append("."),
     "contains this kustomization"),
    ("an overlay whose Secrets lack the namespace", T, lambda d: d[0].pop("namespace"),
     "namespace None: no such Namespace"),
]
TLS_MUTATIONS = {label for label, *_ in TLS}
MUTATIONS += TLS


def mutate(src, rel, fn, into):
    shutil.copytree(src, into)
    path = os.path.join(into, rel)
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    fn(docs)
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def run_mutations(top, bindir):
    failures = 0
    for label, rel, fn, expect in MUTATIONS:
        with tempfile.TemporaryDirectory(prefix="moe_k8s.") as tmp:
            mutate(top, rel, fn, os.path.join(tmp, "k8s"))
            _, lines = k8s_validate.validate(deployments(os.path.join(tmp, "k8s"))[label in TLS_MUTATIONS],
                                             bindir)
        hit = [x for x in lines if expect in x]
        if hit:
            print(f"ok   {label}: {hit[0].split(': ', 1)[-1].splitlines()[0]}")
        else:
            failures += 1
            print(f"FAIL {label}: no problem reported containing {expect!r}; it reported:")
            for x in lines or ["(nothing)"]:
                print(f"       {x}")
    return failures


def check_image(dockerfile, bindir):
    """The runtime stage installs what the binaries link; and it is caught when it does not."""
    if k8s_validate.sanitized(bindir):
        print(f"note: {bindir} is a sanitizer build: the image's libraries are checked against "
              f"the release build's")
        return 0
    failures = 0
    lines = k8s_validate.image_problems(dockerfile, bindir)
    for x in lines:
        print(f"FAIL {x}")
    if not lines:
        print(f"ok   {dockerfile}: its runtime stage installs every library the binaries link")
    text = open(dockerfile).read()
    for label, old, new, expect in (
            ("a runtime library left out", " librocksdb7.8", "", "(package librocksdb7.8)"),
            ("a binary not copied", " /build/bin/moectl", "", "does not copy moectl")):
        with tempfile.TemporaryDirectory(prefix="moe_k8s.") as tmp:
            broken = os.path.join(tmp, "Dockerfile")
            with open(broken, "w") as f:
                f.write(text.replace(old, new, 1))
            hit = [x for x in k8s_validate.image_problems(broken, bindir) if expect in x]
        print(f"ok   {label}: {hit[0].split(': ', 1)[1]}" if hit else
              f"FAIL {label}: nothing reported containing {expect!r}")
        failures += 0 if hit else 1
    return failures + (1 if lines else 0)


def by_identity(docs):
    """kind, namespace, name -> the object; a Secret's data decoded (kustomize folds its
    base64 into lines of 76)."""
    out = {}
    for d in docs:
        if d.get("kind") == "Secret":
            d = dict(d, data={k: base64.b64decode("".join(v.split())) for k, v in
                              (d.get("data") or {}).items()})
        out[(d.get("kind"), d["metadata"].get("namespace"), d["metadata"]["name"])] = d
    return out


def compare_with_kubectl(top, bindir, kubectl):
    """`kubectl kustomize` and the validator's rendering agree, object for object."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="moe_k8s.") as tmp:
        copy = os.path.join(tmp, "k8s")
        shutil.copytree(top, copy)
        for name in ("base/secrets/client.token", "base/secrets/cluster.token", "tls/secrets/ca.crt") + \
                tuple(f"tls/secrets/{w}.{x}" for w in ("coordinator", "worker") for x in ("crt", "key")):
            with open(os.path.join(copy, name), "w") as f:
                f.write(f"made-up {name} for the comparison\n")
        for d in [copy] + [os.path.join(copy, x) for x in ("base", "submit", "tls")]:
            out = subprocess.run([kubectl, "kustomize", d], capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                print(f"FAIL kubectl kustomize {d}: {out.stderr.strip()}")
                failures += 1
                continue
            theirs = by_identity(yaml.safe_load_all(out.stdout))
            ours = by_identity(o.doc for o in k8s_validate.render(d, k8s_validate.Problems()))
            if theirs != ours:
                failures += 1
                for key in sorted(set(theirs) | set(ours), key=str):
                    if theirs.get(key) != ours.get(key):
                        print(f"FAIL {os.path.relpath(d, tmp)}: {key}: kubectl kustomize renders it "
                              f"differently:\n  kubectl:   {theirs.get(key)}\n  validator: {ours.get(key)}")
            else:
                print(f"ok   kubectl kustomize {os.path.relpath(d, tmp)}: the same {len(ours)} objects")
    return failures


def deployments(top):
    """The two ways deploy/k8s is applied: plaintext, and with TLS; each with the demo job."""
    return ([top, os.path.join(top, "submit")],
            [os.path.join(top, "tls"), os.path.join(top, "submit")])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("dir")
    a = ap.parse_args()
    for dirs in deployments(a.dir):
        objs, lines = k8s_validate.validate(dirs, a.bin)
        for x in lines:
            print(f"FAIL {x}")
        if lines:
            print(f"FAIL {' + '.join(dirs)} do not validate: {len(lines)} problems "
                  f"(the mutations need a valid start)")
            return 1
        print(f"ok   {' + '.join(dirs)}: {len(objs)} objects, every check holds")
    failures = run_mutations(a.dir, a.bin)
    failures += check_image(os.path.normpath(os.path.join(a.dir, "..", "docker", "Dockerfile")), a.bin)
    kubectl = shutil.which("kubectl")
    if kubectl:
        failures += compare_with_kubectl(a.dir, a.bin, kubectl)
    else:
        print("note: no kubectl here: the validator's kustomize rendering is not compared with "
              "kubectl's (it is where kubectl is installed)")
    print(f"{len(MUTATIONS)} mutations; {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
