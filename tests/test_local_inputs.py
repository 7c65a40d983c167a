"""Which local paths may be staged, and how directory trees are counted (see ``_local_inputs``)."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_tes import _local_inputs
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.staging import InputStager, StagingReport, check_local_input, digest_file


def write(path: Path, data: bytes = b"data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class MotoStaging:
    """Stages to a fresh prefix of the moto bucket and tells what that prefix holds."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket, self.client = bucket, client
        self.prefix = f"local/{uuid.uuid4().hex}/"

    def run(self, paths: list[str], **kwargs: Any) -> StagingReport:
        stager = InputStager(f"s3://{self.bucket}/{self.prefix}", None, client=self.client, **kwargs)
        return stager.stage(paths)

    def keys(self) -> set[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        return {obj["Key"] for obj in listed.get("Contents", [])}


@pytest.fixture
def moto_staging(s3_bucket: str, s3_client: Any) -> MotoStaging:
    return MotoStaging(s3_bucket, s3_client)


# --------------------------------------------------------------------------- system files


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/1/cmdline", "/sys/kernel", "/dev/null"])
def test_system_files_are_refused_naming_the_argument(path: str) -> None:
    with pytest.raises(TesConfigurationError, match=r"^inputs: .*never staged") as refused:
        check_local_input(path)
    assert "s3://" in str(refused.value)  # the fix: a remote URL


def test_system_files_are_refused_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "innocent.txt").symlink_to("/proc/self/environ")
    with pytest.raises(TesConfigurationError, match=r"resolves to '/proc/"):
        check_local_input(str(tmp_path / "innocent.txt"))


def test_proc_environ_fails_before_anything_is_uploaded(tmp_path: Path, moto_staging: MotoStaging) -> None:
    good = write(tmp_path / "good.txt")
    with pytest.raises(TesConfigurationError, match=r"^inputs: .*/proc"):
        moto_staging.run([str(good), "/proc/self/environ"])
    assert moto_staging.keys() == set()


def test_a_directory_linking_into_proc_is_refused(tmp_path: Path, moto_staging: MotoStaging) -> None:
    write(tmp_path / "d" / "reads.fq")
    (tmp_path / "d" / "me").symlink_to("/proc/self", target_is_directory=True)
    with pytest.raises(TesConfigurationError, match=r"^inputs: .*d/me"):
        moto_staging.run([str(tmp_path / "d")])
    assert moto_staging.keys() == set()


def test_a_file_whose_bytes_differ_from_its_size_is_refused() -> None:
    # procfs files report size 0 whatever they hold; such a file is never staged under a size that hides it.
    with pytest.raises(TesConfigurationError, match=r"reports 0 bytes but \d+ were read"):
        digest_file("/proc/self/status")


# --------------------------------------------------------------------------- allow-list


def test_allow_list(tmp_path: Path) -> None:
    data = write(tmp_path / "data" / "reads.fq")
    sibling = write(tmp_path / "data2" / "secret")  # shares a string prefix with the root
    roots = [str(tmp_path / "data") + "/"]

    check_local_input(str(data), allowed_roots=roots)
    check_local_input(str(tmp_path / "data"), allowed_roots=roots)
    for outside in (sibling, tmp_path / "data" / ".." / "data2" / "secret"):
        with pytest.raises(TesConfigurationError, match=r"^inputs: .*outside the allowed local roots") as err:
            check_local_input(str(outside), allowed_roots=roots)
        assert "allowed_local_roots" in str(err.value)  # the fix
    with pytest.raises(TesConfigurationError, match="outside the allowed local roots"):
        check_local_input(str(data), allowed_roots=[])  # an empty list allows no local input
    with pytest.raises(TesConfigurationError, match="allowed_local_roots: 'data' is not an absolute path"):
        check_local_input(str(data), allowed_roots=["data"])
    # The allow-list never opens the system directories.
    with pytest.raises(TesConfigurationError, match="never staged"):
        check_local_input("/proc/self/environ", allowed_roots=["/"])


def test_symlinks_out_of_the_allowed_roots_are_refused(tmp_path: Path, moto_staging: MotoStaging) -> None:
    secret = write(tmp_path / "home" / ".aws" / "credentials", b"[default]\n")
    root = tmp_path / "data"
    write(root / "reads.fq")
    (root / "creds").symlink_to(secret)
    roots = [str(root)]

    with pytest.raises(TesConfigurationError, match=r"^inputs: .*creds.*outside the allowed local roots"):
        check_local_input(str(root / "creds"), allowed_roots=roots)
    with pytest.raises(TesConfigurationError, match=r"^inputs: .*creds.*outside the allowed local roots"):
        moto_staging.run([str(root)], allowed_roots=roots)
    assert moto_staging.keys() == set()
    with pytest.raises(TesConfigurationError, match="outside the allowed local roots"):
        moto_staging.run([str(root / "reads.fq"), str(secret)], allowed_roots=roots)
    assert moto_staging.keys() == set()

    (root / "creds").unlink()
    moto_staging.run([str(root)], allowed_roots=roots)
    assert len(moto_staging.keys()) == 2  # the file and the marker


# --------------------------------------------------------------------------- counting trees


def fan_out(root: Path, levels: int) -> Path:
    """``levels`` + 1 directories, each linking twice to the next, one file at the bottom: 2**levels paths."""
    dirs = [root / f"L{i}" for i in range(levels + 1)]
    for path in dirs:
        path.mkdir(parents=True)
    for upper, lower in itertools.pairwise(dirs):
        (upper / "a").symlink_to(lower, target_is_directory=True)
        (upper / "b").symlink_to(lower, target_is_directory=True)
    write(dirs[-1] / "f.txt", b"x")
    return dirs[0]


def test_a_symlink_fan_out_past_the_limit_fails_clearly(
    tmp_path: Path, moto_staging: MotoStaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = fan_out(tmp_path, 16)  # 17 directories, 1 file: 65,536 file paths and 131,070 directory paths
    listed: list[str] = []
    list_directory = _local_inputs._list_directory

    def counting(real_dir: str, *args: Any) -> Any:
        listed.append(real_dir)
        return list_directory(real_dir, *args)

    monkeypatch.setattr(_local_inputs, "_list_directory", counting)
    started = time.monotonic()
    with pytest.raises(
        TesConfigurationError, match=r"^inputs: directory .*L0' holds more than 100,000 files"
    ):
        moto_staging.run([str(top)])

    assert time.monotonic() - started < 5
    assert len(listed) == len(set(listed)) <= 17  # each real directory listed once
    assert moto_staging.keys() == set()
    assert _local_inputs.MAX_DIRECTORY_ENTRIES == 100_000


def test_the_limit_counts_paths_through_symlinks_and_can_be_changed(
    tmp_path: Path, moto_staging: MotoStaging
) -> None:
    top = fan_out(tmp_path, 3)  # 2 + 4 + 8 directory paths, then 8 file paths: 22 entries

    with pytest.raises(TesConfigurationError, match="more than 21 files and directories"):
        moto_staging.run([str(top)], max_directory_entries=21)

    [item] = moto_staging.run([str(top)], max_directory_entries=22).staged
    assert item.size_bytes == 8  # the one file, reached through 8 paths
    assert len(moto_staging.keys()) == 8 + 1  # one object per path, and the marker
