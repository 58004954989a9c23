"""Apache Kafka as a single-node KRaft broker, from jars Maven resolves into the state directory."""
from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path
from string import Template

from pipeline.localstack import ServiceSpec
from pipeline.settings import REPO_ROOT, Settings

__all__ = ["kafka_service", "ensure_kafka_jars", "jars_dir", "KafkaSetupError"]

KAFKA_DIR = REPO_ROOT / "deploy/local/kafka"


class KafkaSetupError(RuntimeError):
    pass


def jars_dir(settings: Settings) -> Path:
    configured = settings.local.kafka_jars
    if not configured:
        return settings.home / "kafka" / "lib"
    path = Path(configured)
    return path if path.is_absolute() else REPO_ROOT / path


def ensure_kafka_jars(lib: Path, version: str) -> Path:
    """Resolve the broker jars with Maven into `lib` once; later calls find them there."""
    marker = lib / f".resolved-{version}"
    if marker.exists():
        return lib
    if shutil.which("mvn") is None:
        raise KafkaSetupError("Maven (mvn) is needed to fetch the Kafka broker jars: apt-get install maven")
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    cmd = ["mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), f"-Dkafka.version={version}",
           "dependency:copy-dependencies", f"-DoutputDirectory={lib}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise KafkaSetupError(f"mvn could not resolve Kafka {version}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    marker.touch()
    return lib


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError("a Java runtime is needed for Kafka: apt-get install openjdk-17-jre-headless")
    return java


def kafka_service(settings: Settings) -> ServiceSpec:
    """Render the broker config, format its storage once, and describe how to run it."""
    home = settings.home
    host, _, port = settings.kafka.bootstrap.rpartition(":")
    local = settings.local
    lib = ensure_kafka_jars(jars_dir(settings), local.kafka_version)
    base = home / "kafka"
    data_dir = base / "data"
    config = base / "server.properties"
    data_dir.mkdir(parents=True, exist_ok=True)
    template = Template((KAFKA_DIR / "server.properties.in").read_text())
    config.write_text(template.substitute(host=host, port=port, controller_port=local.kafka_controller_port,
                                          data_dir=data_dir, partitions=settings.kafka.partitions))
    classpath = f"{lib}/*"
    if not (data_dir / "meta.properties").exists():
        done = subprocess.run([_java(), "-cp", classpath, "kafka.tools.StorageTool", "format", "-t",
                               _new_cluster_id(), "-c", str(config)], capture_output=True, text=True)
        if done.returncode != 0:
            raise KafkaSetupError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")
    argv = [
        _java(), f"-Xmx{local.kafka_heap}", f"-Xms{local.kafka_heap}", "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{KAFKA_DIR / 'log4j.properties'}",
        "-cp", classpath, "kafka.Kafka", str(config),
    ]
    return ServiceSpec(name="kafka", argv=argv, ready_port=(host, int(port)), stop_timeout=6.0)


def _new_cluster_id() -> str:
    """KRaft wants a base64url-encoded 16-byte UUID; not one starting with "-", which the storage
    tool's argument parser takes for an option (one start in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
