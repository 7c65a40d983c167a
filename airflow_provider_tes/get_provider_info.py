"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_tes import __version__
from airflow_provider_tes.connection import connection_form_fields


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-tes",
        "name": "GA4GH Task Execution Service (TES)",
        "description": "Run containerised tasks on GA4GH TES servers (Funnel, TESK, Azure TES) from Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "GA4GH TES",
                "external-doc-url": "https://ga4gh.github.io/task-execution-schemas/",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.hooks.tes"]}],
        "operators": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.operators.tes"]}
        ],
        "sensors": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.sensors.tes"]}
        ],
        "triggers": [
            {"integration-name": "GA4GH TES", "python-modules": ["airflow_provider_tes.triggers.tes"]}
        ],
        "cli": ["airflow_provider_tes.cli.definition.get_tes_cli_commands"],
        "config": {
            "tes": {
                "description": "Settings of the GA4GH TES provider shared by every TES connection.",
                "options": {
                    "deployment_name": {
                        "description": "Name of this Airflow deployment, tagged on every TES task it "
                        "submits; give each deployment that shares a TES server its own. Empty: "
                        "derived from the tenant secret.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "prod",
                        "default": None,
                    },
                    "tenant_secret": {
                        "description": "Key of the HMAC that proves a TES task was submitted by this "
                        "deployment (reattach adopts only such tasks). Empty: the TES connection's "
                        "'tenant_secret' extra, else [core] fernet_key, else the connection's credential.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "sensitive": True,
                        "example": None,
                        "default": None,
                    },
                },
            }
        },
        "task-decorators": [{"class-name": "airflow_provider_tes.decorators.tes.tes_task", "name": "tes"}],
        "extra-links": [
            "airflow_provider_tes.links.TesTaskLink",
            "airflow_provider_tes.links.TesOutputsLink",
        ],
        "connection-types": [
            {
                "connection-type": "tes",
                "hook-class-name": "airflow_provider_tes.hooks.tes.TesHook",
                "hook-name": "GA4GH TES",
                "conn-fields": connection_form_fields(),
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "host": "TES base URL",
                        "login": "Username",
                        "password": "Password / token",
                    },
                    "placeholders": {
                        "host": "https://tes.example.org/ga4gh/tes/v1",
                        "login": "user (basic auth)",
                        "password": "password (basic) or token (bearer)",
                        "inputs_url": "s3://my-bucket/tes/inputs/",
                        "outputs_url": "s3://my-bucket/tes/outputs/",
                        "task_link_template": "{base_url}/tasks/{task_id}?view=FULL",
                    },
                },
            }
        ],
    }
