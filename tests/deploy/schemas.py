"""Validates connmon's JSON records against docs/schemas/.

Usage: schemas.py SCHEMA_DIR RECORDS_JSON, where RECORDS_JSON maps a schema
file name (finding.schema.json, ...) to a list of records. Prints one line
per invalid record and exits 1 when any is; "valid N" otherwise.
"""

import json
import pathlib
import sys

import jsonschema
import referencing


def main() -> int:
    schema_dir = pathlib.Path(sys.argv[1])
    records = json.loads(pathlib.Path(sys.argv[2]).read_text())
    schemas = {
        path.name: json.loads(path.read_text()) for path in schema_dir.glob("*.schema.json")
    }
    registry = referencing.Registry().with_resources(
        (schema["$id"], referencing.Resource.from_contents(schema)) for schema in schemas.values()
    )
    invalid = 0
    checked = 0
    for name, items in records.items():
        schema = schemas[name]
        validator = jsonschema.Draft202012Validator(
            schema,
            registry=registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        jsonschema.Draft202012Validator.check_schema(schema)
        for item in items:
            checked += 1
            for error in validator.iter_errors(item):
                invalid += 1
                print(f"{name}: {error.json_path}: {error.message}: {json.dumps(item)[:400]}")
    if invalid:
        return 1
    print(f"valid {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
