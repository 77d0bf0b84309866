"""Validates Kubernetes manifests against the API schemas (kubernetes-validate, strict: an
unknown field is an error) and prints every document as JSON for the wiring checks.

Usage: check_manifests.py DIR KUBERNETES_VERSION

Prints one JSON line: {"documents": [{"file": ..., "doc": {...}}], "custom": [kinds not
checked against a schema, e.g. cert-manager's Certificate]}. Exits 1 on a schema error.
"""

import json
import pathlib
import sys

import kubernetes_validate
import yaml


def main(root, version):
    documents, custom, failures = [], [], []
    for path in sorted(pathlib.Path(root).rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            name = f"{path.relative_to(root)}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                custom.append(f"{doc.get('apiVersion')}/{doc.get('kind')}")
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{name}: {e.message} at {'/'.join(map(str, e.path))}")
            documents.append({"file": str(path.relative_to(root)), "doc": doc})
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"documents": documents, "custom": custom}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
