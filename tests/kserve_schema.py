"""Check a KServe manifest (JSON on stdin) against KServe's own SDK models (kserve.models, and the Kubernetes
models they use): print the list of keys they do not have, or whose values are not of the declared type.

Run as a script by tests/test_serving.py, in a process of its own: kserve's gRPC protos and tritonclient's define
the same message names and cannot be imported into one process.
"""
import json
import re as regex
import sys

import kserve.models
import kubernetes.client.models


def errors(value, kind: str, where: str = 'InferenceService') -> list:
    """Every key of ``value`` that KServe's own SDK models (kserve.models, and the Kubernetes models they use) do not
    have, or whose value is not of the type they declare: the schema ``kubectl apply`` checks against."""
    if kind.lower().startswith(('list[', 'dict(', 'dict[')):
        inner = regex.match(r'(?i)(list\[|dict\(str, |dict\[str, )(.*)[\])]$', kind).group(2)
        is_list = kind.lower().startswith('list')
        if not isinstance(value, list if is_list else dict):
            return [f'{where}: not a {kind}']
        return [e for k, v in (enumerate(value) if is_list else value.items()) for e in errors(v, inner, f'{where}.{k}')]
    model = getattr(kserve.models, kind, None) or getattr(kubernetes.client.models, kind, None)
    if model is None:
        primitive = {'str': str, 'int': int, 'bool': bool, 'object': object}[kind]
        return [] if isinstance(value, primitive) else [f'{where}: not a {kind}']
    names = {json_key: attr for attr, json_key in model.attribute_map.items()}
    if not isinstance(value, dict):
        return [f'{where}: not a {kind}']
    unknown = [f'{where}.{key}: not a field of {kind}' for key in value if key not in names]
    return unknown + [e for key, v in value.items() if key in names
                     for e in errors(v, model.openapi_types[names[key]], f'{where}.{key}')]


if __name__ == '__main__':
    print(json.dumps(errors(json.load(sys.stdin), 'V1beta1InferenceService')))
