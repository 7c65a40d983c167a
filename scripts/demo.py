"""`make demo`: start moto (S3) and Funnel (TES) on loopback, run the hello-world DAG with
`airflow dags test`, and print its XCom result and the output it wrote to S3.

Run from the repository root as a module (``python -m scripts.demo``) so that the stack is
imported from ``tests.support`` like the tests import it."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.airflow_env import AirflowEnv, stack_connections
from tests.support.stack import FunnelServer, MotoServer, find_funnel_binary

BUCKET = "tes-demo"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tes-demo-") as tmp:
        root = Path(tmp)
        (root / "funnel").mkdir()
        password = secrets.token_urlsafe(16)
        with (
            MotoServer(log_path=root / "moto.log") as s3,
            FunnelServer(find_funnel_binary(), root / "funnel", s3.endpoint_url, "admin", password) as funnel,
        ):
            s3.create_bucket(BUCKET)
            print(f"S3 (moto) at {s3.endpoint_url}, TES (Funnel) at {funnel.base_url}")
            airflow = AirflowEnv(
                home=root / "airflow",
                connections=stack_connections(funnel, s3.endpoint_url, BUCKET, "demo"),
            )
            print("Migrating the Airflow metadata DB (SQLite) ...")
            airflow.migrate()
            print("Running: airflow dags test example_tes_hello")
            proc = airflow.dags_test("example_tes_hello", check=False)
            result = airflow.xcom("example_tes_hello", "hello")
            if proc.returncode != 0 or not result:
                print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n")
                print("demo FAILED", file=sys.stderr)
                return 1
            print("XCom result of task 'hello':")
            print(json.dumps(result, indent=2))
            client = s3.client("s3")
            for url in (result["stdout_url"], result["work_dir_url"] + "greeting.txt"):
                parts = urlsplit(url)
                body = client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read()
                print(f"--- {url}\n{body.decode().rstrip()}")
            print("demo OK")
            return 0


if __name__ == "__main__":
    sys.exit(main())
