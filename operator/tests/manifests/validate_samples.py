"""Validates LynxDeployment samples against the openAPIV3Schema of the committed CRD.

Usage: validate_samples.py CRD_YAML SAMPLES_DIR

Strict like `kubectl apply` (field validation Strict): an unknown field is an error. Expected:
every SAMPLES_DIR/*.yaml passes; SAMPLES_DIR/invalid/schema-*.yaml are rejected; and
SAMPLES_DIR/invalid/cel-*.yaml pass the schema (their CEL rules reject them; a Rust test checks
that). Exits 1 and names each sample that did not meet its expectation.
"""
import copy
import glob
import os
import sys

import jsonschema
import yaml


def strict(schema):
    """Copies an OpenAPI v3 structural schema, refusing unknown fields where fields are declared."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            if node.get("nullable") and "type" in node:
                node["type"] = [node["type"], "null"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def main(crd_path, samples_dir):
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    version = crd["spec"]["versions"][0]
    schema = strict(version["schema"]["openAPIV3Schema"])
    # The API server adds the object's envelope to every CRD schema.
    schema.setdefault("properties", {}).update(
        {
            "apiVersion": {"const": f'{crd["spec"]["group"]}/{version["name"]}'},
            "kind": {"const": crd["spec"]["names"]["kind"]},
            "metadata": {"type": "object"},
        }
    )
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "spec"})
    validator = jsonschema.Draft7Validator(schema)
    expectations = [(path, True) for path in sorted(glob.glob(os.path.join(samples_dir, "*.yaml")))]
    invalid = os.path.join(samples_dir, "invalid")
    expectations += [(p, True) for p in sorted(glob.glob(os.path.join(invalid, "cel-*.yaml")))]
    expectations += [(p, False) for p in sorted(glob.glob(os.path.join(invalid, "schema-*.yaml")))]
    failures = 0
    for path, should_pass in expectations:
        with open(path) as f:
            sample = yaml.safe_load(f)
        errors = [e.message for e in validator.iter_errors(sample)]
        passed = not errors
        verdict = "valid" if passed else "rejected: " + "; ".join(errors)
        print(f"{os.path.relpath(path, samples_dir)}: {verdict}")
        if passed != should_pass:
            failures += 1
            print(f"  expected {'valid' if should_pass else 'rejected'}", file=sys.stderr)
    if len(expectations) < 4:
        print("too few samples found", file=sys.stderr)
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
