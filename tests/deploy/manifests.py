"""Offline checks of the deployment files, run by tests/tests/deploy.rs with
the venv that `cargo xtask setup` makes (.cache/kubernetes-validate, which
brings PyYAML and jsonschema).

  manifests.py json FILE...      every YAML document of the files, as one JSON list
  manifests.py crd CRD_DIR FILE  validates a custom resource (PodMonitor,
                                 PrometheusRule) strictly against the
                                 vendored CustomResourceDefinition's schema
"""

import json
import pathlib
import sys

import jsonschema
import yaml


def documents(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def strict(schema):
    """The CRD's openAPIV3Schema with unknown fields made errors, as the API
    server's field validation treats them: every object that lists its
    properties gets additionalProperties: false, unless it preserves
    unknown fields or says what extra properties may hold."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schema(crd_dir, api_version, kind):
    group, _, version = api_version.partition("/")
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        for crd in documents(path):
            spec = crd["spec"]
            if spec["group"] != group or spec["names"]["kind"] != kind:
                continue
            for served in spec["versions"]:
                if served["name"] == version and served.get("served"):
                    return strict(served["schema"]["openAPIV3Schema"])
    raise SystemExit(f"no served CRD for {api_version} {kind} in {crd_dir}")


def validate_crd(crd_dir, path):
    failures = 0
    for doc in documents(path):
        schema = crd_schema(crd_dir, doc.get("apiVersion", ""), doc.get("kind", ""))
        metadata = doc.get("metadata", {})
        if not metadata.get("name") or not metadata.get("namespace"):
            print(f"{path}: metadata.name and metadata.namespace are required")
            failures += 1
        validator = jsonschema.Draft7Validator(schema)
        for error in validator.iter_errors(doc):
            where = ".".join(str(p) for p in error.absolute_path) or "(top)"
            print(f"{path}: {where}: {error.message}")
            failures += 1
    if failures:
        raise SystemExit(1)
    print(f"{path}: valid")


def main(argv):
    if len(argv) >= 2 and argv[0] == "json":
        out = []
        for path in argv[1:]:
            out.extend(documents(path))
        json.dump(out, sys.stdout)
    elif len(argv) == 3 and argv[0] == "crd":
        validate_crd(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
