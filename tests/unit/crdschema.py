"""Custom resources as an API server with the vendored CRDs (deploy/schema/crds) installed would take
them (issue 14, item 3); shared by tests/unit/test_deploy_crds.py and tests/unit/test_gateway.py.

`custom_errors(obj)` says why the server would reject or prune part of obj:

- the CRD's defaults are applied first, as the server applies them when it decodes the object;
- then the served version's openAPIV3Schema, as a draft-4 JSON Schema closed to every field the
  server would prune (an error here: the server would drop it without a word), with the int32/int64
  ranges and x-kubernetes-list-type;
- and every CEL rule (x-kubernetes-validations) the object meets, evaluated by cel-python the way
  Kubernetes evaluates it (see `to_cel`); a rule that does not compile, calls a function this
  validator lacks, or cannot be evaluated is an error that names the rule: never a skip. As the
  server, no rule runs after a "blocking" schema error (BLOCKING), and the errors say so;
- ObjectMeta against Kubernetes' own schema."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import yaml
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, CELFunction, CELUnsupportedError, base_functions
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

from tests.unit.test_deploy import K8S_VERSION, ROOT

Doc = dict[str, Any]  # a YAML mapping: a manifest, a schema node

CRD_DIR = ROOT / "deploy" / "schema" / "crds"


def group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


# ------------------------------------------------------------------ the CRDs


@cache
def crd_files() -> list[tuple[Path, Doc]]:
    found = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path, doc))
    return found


@cache
def served() -> dict[tuple[str, str, str], Doc]:
    """(group, version, kind) -> the openAPIV3Schema of every served version of every CRD there."""
    schemas: dict[tuple[str, str, str], Doc] = {}
    for path, crd in crd_files():
        if crd.get("kind") != "CustomResourceDefinition":
            continue  # a release's install file may carry more (Gateway API's: a ValidatingAdmissionPolicy)
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1", f"{path.name}: {crd['apiVersion']}"
        spec = crd["spec"]
        for version in spec["versions"]:
            if version["served"]:
                key = (spec["group"], version["name"], spec["names"]["kind"])
                assert key not in schemas, f"{path.name}: a second CRD serves {key}"
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def rules_in(schema: Any) -> Iterator[tuple[str, Doc, Doc]]:
    """(JSON path, the node's schema, the rule) of every x-kubernetes-validations rule in a schema."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, Doc, Doc]]:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                yield path or ".", node, rule
            for key, value in node.items():
                yield from walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}/{i}")

    return walk(schema, "")


# ------------------------------------------------------------------ defaults


def with_defaults(value: Any, schema: Doc) -> Any:
    """A copy of value with the schema's `default`s where a property is absent (or null and not
    nullable), then the same inside every value, defaulted ones included: how the API server
    defaults a custom resource before it validates it (structural defaulting)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for name, sub in props.items():
            if "default" in sub and (out.get(name) is None and not (name in out and sub.get("nullable"))):
                out[name] = copy.deepcopy(sub["default"])
        more = schema.get("additionalProperties")
        rest = more if isinstance(more, dict) else {}
        return {k: with_defaults(v, props.get(k, rest)) for k, v in out.items()}
    if isinstance(value, list):
        return [with_defaults(v, schema.get("items", {})) for v in value]
    return value


# ------------------------------------------------------------------ CRDs to JSON Schema

# What a rule at the root (or on an x-kubernetes-embedded-resource) sees of metadata: name and
# generateName only. ObjectMeta itself is checked against Kubernetes' schema (custom_errors).
METADATA: Doc = {"type": "object", "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}}}


def as_json_schema(node: Doc, prune: bool = True) -> Doc:
    """A structural schema (OpenAPI v3.0 with Kubernetes' extensions) as a draft-4 JSON Schema that
    accepts what the API server keeps and nothing it would prune:

    - `x-kubernetes-int-or-string`: an integer or a string, whatever else the node says;
    - `nullable`: null as well;
    - an object keeps only its `properties` (the server prunes any other field; here it is an
      error), unless `additionalProperties` gives a schema for the rest or
      `x-kubernetes-preserve-unknown-fields` keeps them; `x-kubernetes-embedded-resource` keeps
      apiVersion, kind and metadata;
    - value validations (`allOf`, `anyOf`, `oneOf`, `not`) add no fields in a structural schema, so
      their branches are checked as written, without pruning (``prune=False``);
    - `x-kubernetes-validations` and `x-kubernetes-list-type` stay, checked by the keywords below."""
    out: Doc = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: as_json_schema(sub, prune) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = as_json_schema(value, prune)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [as_json_schema(sub, prune=False) for sub in value]
        elif key == "not":
            out[key] = as_json_schema(value, prune=False)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        out["type"] = [*types(out), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        prune
        and node.get("type") == "object"
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        out["additionalProperties"] = False
        if node.get("x-kubernetes-embedded-resource"):
            kept = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": METADATA}
            out["properties"] = {**kept, **out.get("properties", {})}
    return out


def types(schema: Doc) -> list[str]:
    found = schema.get("type", [])
    return [found] if isinstance(found, str) else list(found)


# ------------------------------------------------------------------ CEL, as Kubernetes runs it

# Property names that are CEL keywords, and the characters CEL identifiers lack, are escaped
# (k8s.io/apiserver/pkg/cel, Escape; the CRD validation rules documentation): `namespace` is
# `__namespace__`, `x-prop` is `x__dash__prop`, `a.b` is `a__dot__b`, `a/b` is `a__slash__b` and
# `redact__d` is `redact__underscores__d`. A name outside [a-zA-Z_.-/][a-zA-Z0-9_.-/]* is not visible.
CEL_RESERVED = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if"}
    | {"import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
)
_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
_VISIBLE = re.compile(r"[a-zA-Z_./-][a-zA-Z0-9_./-]*")


def escape(name: str) -> str | None:
    """The name a rule reads a property by, or None when rules cannot see it."""
    if not _VISIBLE.fullmatch(name):
        return None
    if name in CEL_RESERVED:
        return f"__{name}__"
    return re.sub(r"__|[-./]", lambda m: _ESCAPES[m.group()], name)


def _unknown(schema: Doc) -> bool:
    """An "unknown type" (no type, unknown fields preserved): its data is not visible to rules."""
    return bool(schema.get("x-kubernetes-preserve-unknown-fields")) and not set(types(schema)) - {"null"}


# Strings of these formats are other CEL types in Kubernetes (timestamp, duration, bytes); no rule of
# the vendored CRDs reads one (a test checks), so to_cel has no conversion for them.
TYPED_FORMATS = frozenset({"date-time", "date", "duration", "byte"})


def to_cel(value: Any, schema: Doc) -> Any:
    """value as a rule's `self` sees it at a node of (as_json_schema's) schema: an object with
    properties is a CEL object of its declared properties under their escaped names, where a null
    is absent and the unknown fields it preserves are not there; an object with additionalProperties
    is a map keyed as it is; integer/number/string/boolean/array as CEL's int/double/string/bool/list
    (int-or-string: either)."""
    if isinstance(value, dict):
        more = schema.get("additionalProperties")
        if isinstance(more, dict) and "properties" not in schema:
            return celtypes.MapType({celtypes.StringType(k): to_cel(v, more) for k, v in value.items()})
        props = schema.get("properties", {})
        fields = {}
        for key, item in value.items():
            name = escape(key)
            if key in props and name is not None and item is not None and not _unknown(props[key]):
                fields[celtypes.StringType(name)] = to_cel(item, props[key])
        return celtypes.MapType(fields)
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.DoubleType(value) if "number" in types(schema) else celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    return value  # null


# Kubernetes' CEL libraries (lists, strings, regex, url, quantity, ip, cidr, format, ...): the
# functions of theirs the vendored CRDs' rules call, as celpy functions. Today's rules call none:
# only standard CEL (has, all, exists, exists_one, filter, size, contains, startsWith, endsWith,
# matches, duration, in), which celpy has. A rule calling a function missing from celpy and from
# here is an error naming the function (test_deploy_crds checks every rule of every CRD).
EXTENSIONS: dict[str, CELFunction] = {}
MACROS = frozenset({"has", "dyn", "all", "exists", "exists_one", "map", "filter"})
AVAILABLE = frozenset(base_functions) | MACROS | frozenset(EXTENSIONS)
ENV = celpy.Environment()


@dataclass(frozen=True)
class Rule:
    text: str
    runner: celpy.Runner | None  # None: the rule cannot run (problem says why)
    problem: str
    transition: bool  # reads oldSelf


def called(ast: Any) -> set[str]:  # a celpy.Expression (a lark tree)
    """The functions and macros an expression calls: f(...), x.f(...) and .f(...)."""
    names = {str(t.children[0]) for t in ast.find_data("ident_arg")}
    names |= {str(t.children[0]) for t in ast.find_data("dot_ident_arg")}
    names |= {str(t.children[1]) for t in ast.find_data("member_dot_arg")}
    return names


@cache
def compiled(text: str) -> Rule:
    try:
        ast = ENV.compile(text)
    except CELParseError as e:
        return Rule(text, None, f"does not compile: {e}", False)
    transition = "oldSelf" in {str(t.children[0]) for t in ast.find_data("ident")}
    missing = called(ast) - AVAILABLE
    if missing:
        return Rule(text, None, f"calls {sorted(missing)}, which neither celpy nor EXTENSIONS has", transition)
    return Rule(text, ENV.program(ast, functions=EXTENSIONS), "", transition)


# What the rules did during this run (rule text -> times): the tests show from them that rules ran.
EVALUATED: Counter[str] = Counter()
# Transition rules (those reading oldSelf, the object before an update) are skipped: the API server
# runs them on updates only, and every object here is checked as it is created. None of the vendored
# CRDs has one today; they are counted here all the same.
SKIPPED_TRANSITION: Counter[str] = Counter()

_CEL_ERRORS = (CELUnsupportedError, TypeError, ValueError, LookupError, AttributeError)


def evaluate(rule: Rule, self_: Any) -> Any:
    """The rule's value for self_, or the reason it has none."""
    assert rule.runner is not None
    try:
        return rule.runner.evaluate({"self": self_})
    except CELEvalError as e:
        return e
    except _CEL_ERRORS as e:  # celpy's own failure on an odd value: still the rule's error
        return CELEvalError(repr(e))


def failure_message(rule: Doc, self_: Any) -> str:
    """messageExpression's string when it gives a usable one, else message, else the server's
    "failed rule: <rule>"."""
    if expression := rule.get("messageExpression"):
        compiled_expression = compiled(expression)
        text = evaluate(compiled_expression, self_) if compiled_expression.runner else None
        if isinstance(text, str) and text.strip() and "\n" not in text:
            return str(text)
    return str(rule.get("message") or f"failed rule: {rule['rule']}")


def _cel(validator: Any, rules: list[Doc], instance: Any, schema: Doc) -> Iterator[ValidationError]:
    wanted = set(types(schema)) - {"null"}
    if instance is None or (wanted and not any(validator.is_type(instance, t) for t in wanted)):
        return  # null is absent to CEL; a value of the wrong type is the schema's error already
    self_ = to_cel(instance, schema)
    for spec in rules:
        rule = compiled(spec["rule"])
        if rule.transition:
            SKIPPED_TRANSITION[rule.text] += 1  # on create, the server skips it too (no oldSelf)
            continue
        if rule.runner is None:
            yield ValidationError(f"CEL rule {rule.problem}: {rule.text}")
            continue
        EVALUATED[rule.text] += 1
        result = evaluate(rule, self_)
        if isinstance(result, CELEvalError):
            yield ValidationError(f"CEL rule cannot be evaluated ({result.args[0]}): {rule.text}")
        elif not isinstance(result, celtypes.BoolType):
            yield ValidationError(f"CEL rule gives {result!r}, not a bool: {rule.text}")
        elif not result:
            yield ValidationError(f"{failure_message(spec, self_)} (CEL rule: {rule.text})")


def _list_type(validator: Any, list_type: str, instance: Any, schema: Doc) -> Iterator[ValidationError]:
    if not isinstance(instance, list):
        return
    if list_type == "set" and len({repr(item) for item in instance}) != len(instance):
        yield ValidationError(f"x-kubernetes-list-type set has duplicates: {instance!r}")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = [tuple(item.get(k) for k in keys) for item in instance if isinstance(item, dict)]
        if len(set(seen)) != len(seen):
            yield ValidationError(f"x-kubernetes-list-type map has two items with the keys {keys}: {seen}")


def _integer_format(bits: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return not isinstance(value, int) or -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)

    return check


FORMATS = FormatChecker()
FORMATS.checks("int32")(_integer_format(32))
FORMATS.checks("int64")(_integer_format(64))
KubernetesValidator = validators.extend(
    Draft4Validator, {"x-kubernetes-validations": _cel, "x-kubernetes-list-type": _list_type}
)


# The schema errors after which the API server runs no CEL rule (a wrong type, a required field
# missing, a value not in the enum, too long, too many: "blocking" errors, apiextensions-apiserver's
# hasBlockingErr) and says so instead: the rules were written for objects of the schema's shape.
BLOCKING = frozenset({"type", "required", "enum", "maxLength", "maxItems", "maxProperties"})
RULES_NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; correct the existing errors to "
    "complete validation"
)


@cache
def validator_for(group: str, version: str, kind: str) -> Any:
    schema = as_json_schema(copy.deepcopy(served()[(group, version, kind)]))
    schema["properties"]["metadata"] = METADATA  # the server checks ObjectMeta itself: see custom_errors
    return KubernetesValidator(schema, format_checker=FORMATS)


def custom_errors(obj: Doc) -> list[str]:
    """Why the API server, with the vendored CRDs installed, would reject or prune part of obj
    (each as "<kind> <name>: <path>: <why>")."""
    group, version = group_version(obj["apiVersion"])
    key = (group, version, obj["kind"])
    if key not in served():
        offered = sorted(v for g, v, k in served() if (g, k) == (group, obj["kind"]))
        return [f"no CRD in deploy/schema/crds serves {key} (served versions of that kind: {offered})"]
    where = f"{obj['kind']} {obj.get('metadata', {}).get('name')}"
    found = list(validator_for(*key).iter_errors(with_defaults(obj, served()[key])))
    if any(e.validator in BLOCKING for e in found) and any(True for _ in rules_in(served()[key])):
        found = [e for e in found if e.validator != "x-kubernetes-validations"]
        errors = [f"{where}: .: {RULES_NOT_CHECKED}"]
    else:
        errors = []
    errors[:0] = [f"{where}: {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found]
    try:  # ObjectMeta as Kubernetes' own schema has it, strictly (no unknown fields)
        wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{where}: metadata: {e.message}")
    return errors
