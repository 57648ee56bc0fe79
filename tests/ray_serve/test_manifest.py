"""deploy/rayservice.yaml against Kubernetes' own schemas (kubernetes-validate, strict).

KubeRay's CRD schema is not packaged anywhere this project can install it from, and a copy
would be another project's file; what Kubernetes itself will check is here: every pod
template of the RayService is a valid core/v1 pod spec. The Serve config inside it is checked
against Ray's own schema in test_serve.py."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support import ROOT

KUBERNETES = "1.33"
MANIFEST = ROOT / "deploy" / "rayservice.yaml"


def _manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return loaded


def _pod_templates(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def _as_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template.get("metadata", {})},
        "spec": template["spec"],
    }


def test_every_pod_template_is_a_valid_pod_spec() -> None:
    templates = _pod_templates(_manifest())
    assert set(templates) == {"head", "scribe"}
    for name, template in templates.items():
        kubernetes_validate.validate(_as_pod(name, template), KUBERNETES, strict=True)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("resources", "limits", "cpu"), {"cores": 4}),
        (("ports", 0, "containerPort"), "eight thousand"),
        (("imagePullPolicy",), ["Always"]),
        (("livenessprobe",), {}),  # misspelt: strict validation refuses unknown fields
    ],
)
def test_a_broken_pod_template_is_refused(where: tuple[str | int, ...], value: Any) -> None:
    """The check can fail: each of these edits makes the head pod invalid."""
    template = copy.deepcopy(_pod_templates(_manifest())["head"])
    node: Any = template["spec"]["containers"][0]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_as_pod("head", template), KUBERNETES, strict=True)
