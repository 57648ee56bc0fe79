"""Checks a Serve config file in the ray venv: it parses as Ray's own schema for
`serve deploy`, and each application's builder accepts its args. Usage: check_config.py FILE"""

from __future__ import annotations

import importlib
import sys

import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

config = ServeDeploySchema.model_validate(yaml.safe_load(open(sys.argv[1])))
for app in config.applications:
    module, name = app.import_path.split(":")
    built = getattr(importlib.import_module(module), name)(app.args)
    assert isinstance(built, Application), type(built)
print(f"{len(config.applications)} application(s), proxy {config.proxy_location}")
