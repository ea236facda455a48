#!/usr/bin/env python3
"""Schema check of the Kubernetes manifests (kubernetes-validate, strict: unknown fields and wrong types fail;
KEDA objects against infra/k8s/schemas/), and YAML -> JSON for tests/tests/deploy.rs.

  PYTHONPATH=~/.cache/sentiflow/python/k8s-validate python3 infra/k8s/validate.py infra/k8s [more files/dirs]
  ... validate.py --to-json FILE|-        # every YAML document of FILE (or stdin) as one JSON array
"""

import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

# The Kubernetes version the manifests target (its strict schemas ship in the kubernetes-validate wheel).
K8S_VERSION = "1.33.0"
SCHEMA_DIR = pathlib.Path(__file__).resolve().parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication-v1alpha1.json",
}


def documents(path):
    text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def manifest_files(args):
    for arg in args:
        path = pathlib.Path(arg)
        if path.is_dir():
            yield from sorted(p for p in path.glob("*.yaml"))
        else:
            yield path


def check(doc):
    """Errors of one document (empty when valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        schema = json.loads((SCHEMA_DIR / crd).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path) or "<root>"
        return [f"{where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {K8S_VERSION}"]
    return []


def main(argv):
    if len(argv) == 2 and argv[0] == "--to-json":
        json.dump(documents(argv[1]), sys.stdout)
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    failures = 0
    count = 0
    for path in manifest_files(argv):
        for doc in documents(path):
            count += 1
            name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}" if isinstance(doc, dict) else "?"
            for error in check(doc):
                failures += 1
                print(f"{path}: {name}: {error}")
    print(f"{count} objects checked against Kubernetes {K8S_VERSION} (strict) and the KEDA schemas, {failures} errors")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
