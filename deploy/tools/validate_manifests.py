#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, strictly (unknown fields are errors).

Usage: validate_manifests.py --k8s-version 1.30 [--k8s-version 1.37] FILE...

Built-in kinds are checked against the JSON schemas that the PyPI package
`kubernetes-validate` bundles. ServiceMonitor (a CRD of the Prometheus
Operator) is checked against the models generated from its CRD, shipped by the
PyPI package `cloudcoil-models-prometheus-operator`: types, enums, patterns and
required fields by pydantic, and unknown fields by a walk over the model (the
models themselves ignore extra keys). Any other kind without a schema fails.
"""

import argparse
import sys
import types
import typing

import yaml


def load_docs(path):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc is not None:
                yield doc


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# --- strict walk over pydantic models -------------------------------------


def _is_model(t):
    return isinstance(t, type) and hasattr(t, "model_fields")


def _candidates(annotation):
    """The concrete types an annotation may stand for (Optional/Union/Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        out = []
        for a in typing.get_args(annotation):
            out.extend(_candidates(a))
        return out
    return [annotation]


def unknown_fields(annotation, value, path):
    """Yields 'path: unknown field' for every key the model does not define."""
    for t in _candidates(annotation):
        origin = typing.get_origin(t)
        if _is_model(t) and isinstance(value, dict):
            fields = {}
            for name, f in t.model_fields.items():
                fields[f.alias or name] = f
                fields[name] = f
            for k, v in value.items():
                if k not in fields:
                    yield f"{path}.{k}: unknown field (known: {', '.join(sorted({f.alias or n for n, f in t.model_fields.items()}))})"
                else:
                    yield from unknown_fields(fields[k].annotation, v, f"{path}.{k}")
            return
        if origin in (list, typing.List) and isinstance(value, list):
            (item,) = typing.get_args(t) or (typing.Any,)
            for i, v in enumerate(value):
                yield from unknown_fields(item, v, f"{path}[{i}]")
            return
        if origin in (dict, typing.Dict) and isinstance(value, dict):
            args = typing.get_args(t)
            if len(args) == 2:
                for k, v in value.items():
                    yield from unknown_fields(args[1], v, f"{path}[{k}]")
            return


def validate_service_monitor(doc):
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    import pydantic

    problems = []
    try:
        ServiceMonitor.model_validate(doc)
    except pydantic.ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc}: {err['msg']}")
    # metadata is plain ObjectMeta; spec is where a typo would silently do nothing.
    problems.extend(unknown_fields(ServiceMonitor, doc, "$"))
    return problems


# --- main --------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    import kubernetes_validate.utils as kv

    failed = 0
    checked = 0
    for path in args.files:
        for doc in load_docs(path):
            checked += 1
            what = f"{path}: {name_of(doc)}"
            if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "ServiceMonitor":
                problems = validate_service_monitor(doc)
                if problems:
                    failed += 1
                    for p in problems:
                        print(f"FAIL {what} (ServiceMonitor CRD schema): {p}")
                else:
                    print(f"ok   {what} (against the Prometheus Operator CRD models)")
                continue
            for version in args.k8s_version:
                try:
                    kv.validate(doc, version, strict=True)
                    print(f"ok   {what} (Kubernetes {version}, strict)")
                except kv.ValidationError as e:
                    failed += 1
                    loc = ".".join(str(p) for p in e.path)
                    print(f"FAIL {what} (Kubernetes {version}): {loc}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    failed += 1
                    print(f"FAIL {what}: {e.message}")
                except kv.VersionNotSupportedError as e:
                    failed += 1
                    print(f"FAIL {what}: {e.message}")
    print(f"{checked} resources checked, {failed} failed")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
