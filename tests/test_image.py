"""The arm64 device image (deploy/image/build): the reader runs in the root filesystem under
qemu-user emulation, first boot runs in it, and the flashable image is inspected without mounting.

One build serves every test here: the image, and the root filesystem it was made from (left in
build/image-test/rootfs). It needs root (chroot, binfmt_misc) and Debian's package archive, takes
about 20 minutes on two cores, and is cached under build/ between runs of the same sources.
EDGE_IMAGE_TESTS=0 skips these tests; so does a machine that cannot run arm64 binaries.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("EDGE_IMAGE_TESTS") == "0", reason="EDGE_IMAGE_TESTS=0")

CLIP = ROOT / "fixtures" / "videos" / "07_mixed_styles.mp4"
# the booted image plays its camera clip in real time, as slow as emulation is: a plate in view for 7 s
BOOT_CLIP = ROOT / "fixtures" / "videos" / "01_gate_day.mp4"
SOURCES = ["deploy/image/build", "deploy/image/stage.sh", "deploy/image/install-edge.sh", "deploy/image/edge-firstboot.sh",
           "deploy/image/units/edge.service", "deploy/image/units/edge-firstboot.service", "deploy/image/units/edge-sshkeys.service", "pyproject.toml",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "models").glob("*.onnx")), *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edge").rglob("*.py"))]


def sources_digest() -> str:
    h = hashlib.sha256()
    for s in SOURCES:
        h.update(s.encode() + (ROOT / s).read_bytes())
    return h.hexdigest()[:16]


def build(out: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (chroot, binfmt_misc)")
    stamp = out / "sources.sha"
    if stamp.exists() and stamp.read_text() == sources_digest() and (out / "edge-lpr-arm64.img").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PY": str(ROOT / ".venv" / "bin" / "python")}
    t0 = time.monotonic()
    with open(out.parent / "image-test.log", "w") as log:
        r = subprocess.run(["bash", "deploy/image/build", str(out)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=3600)
    text = (out.parent / "image-test.log").read_text()
    if r.returncode == 3:
        pytest.skip("this machine cannot run arm64 binaries (binfmt_misc + qemu-user-static)")
    assert r.returncode == 0, text[-4000:]
    print(f"image built in {time.monotonic() - t0:.0f} s")
    stamp.write_text(sources_digest())
    return out


@pytest.fixture(scope="module")
def image():
    return build(ROOT / "build" / "image-test")


def test_reader_runs_in_the_arm64_rootfs_under_emulation(image, tmp_path):
    rootfs = image / "rootfs"
    assert "ARM aarch64" in subprocess.run(["file", "-L", str(rootfs / "usr/bin/python3")], capture_output=True, text=True).stdout \
        or (rootfs / "usr/lib/aarch64-linux-gnu").is_dir()
    shutil.copy(CLIP, rootfs / "tmp" / "clip.mp4")
    try:
        r = subprocess.run(["chroot", str(rootfs), "/usr/bin/env", "EDGE_MODELS=/opt/edge/models", "HOME=/tmp",
                            "/opt/edge/venv/bin/edge", "replay", "/tmp/clip.mp4", "--fast", "--json", "--outbox", "/tmp/o.db"],
                           capture_output=True, text=True, timeout=1800)
    finally:
        (rootfs / "tmp" / "clip.mp4").unlink(missing_ok=True)
    assert r.returncode == 0, r.stderr[-3000:]
    reads = sorted(json.loads(x)["plate"]["text"] for x in r.stdout.splitlines() if x.startswith("{"))
    host = subprocess.run([str(ROOT / ".venv" / "bin" / "edge"), "replay", str(CLIP), "--fast", "--json", "--outbox",
                           str(tmp_path / "h.db")], capture_output=True, text=True, timeout=600)
    want = sorted(json.loads(x)["plate"]["text"] for x in host.stdout.splitlines() if x.startswith("{"))
    print(f"arm64 reads {reads}, x86-64 reads {want}")
    assert reads and reads == want


def test_rootfs_has_the_service_and_no_secrets(image):
    rootfs = image / "rootfs"
    assert (rootfs / "etc/systemd/system/edge.service").exists()
    assert (rootfs / "etc/systemd/system/multi-user.target.wants/edge.service").is_symlink()  # enabled
    assert (rootfs / "opt/edge/venv/bin/edge").exists() and all(
        (rootfs / "opt/edge/models" / f.name).exists() for f in (ROOT / "models").glob("*.onnx"))
    unit = (rootfs / "etc/systemd/system/edge.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=", "ProtectSystem=strict", "StateDirectory=", "LoadCredential=", "User=edge"):
        assert key in unit
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert (rootfs / "etc/hostname").read_text().strip() == "edge-lpr"  # not the build machine's name
    assert (rootfs / "etc/systemd/system/ssh.service.wants/edge-sshkeys.service").is_symlink()  # host keys made on the device
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    assert "PasswordAuthentication no" in (rootfs / "etc/ssh/sshd_config.d/10-edge.conf").read_text()
    shadow = (rootfs / "etc/shadow").read_text()
    assert all(line.split(":")[1] in ("*", "!", "!*", "!!") or line.split(":")[1].startswith("!") for line in shadow.splitlines())
    assert not [p for p in (rootfs / "etc").rglob("*.key")]


def test_firstboot_in_the_chroot(image, tmp_path):
    rootfs = image / "rootfs"
    ca = tmp_path / "ca"
    subprocess.run([str(ROOT / ".venv/bin/edge"), "provision", "ca", "--ca-dir", str(ca)], check=True, capture_output=True)
    boot = rootfs / "boot" / "firmware"
    boot.mkdir(parents=True, exist_ok=True)
    bundle = boot / "edge-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run([str(ROOT / ".venv/bin/edge"), "provision", "device", "gate-9", "--ca-dir", str(ca), "--out", str(bundle),
                    "--owner", "Agency"], check=True, capture_output=True)
    saved = {p: (rootfs / p).read_bytes() for p in ("etc/hostname", "etc/hosts") if (rootfs / p).exists()}
    try:
        # its own UTS namespace, so setting the hostname inside cannot touch this machine's
        r = subprocess.run(["unshare", "--uts", "chroot", str(rootfs), "/usr/bin/env", "ROOT=", "/usr/local/sbin/edge-firstboot"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        key = rootfs / "etc/edge/credentials/device.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        uid = int([x for x in (rootfs / "etc/passwd").read_text().splitlines() if x.startswith("edge:")][0].split(":")[2])
        assert key.stat().st_uid == uid
        assert not bundle.exists()
        assert (rootfs / "etc/hostname").read_text().strip() == "gate-9"
    finally:  # leave the cached root filesystem as the build made it
        shutil.rmtree(rootfs / "etc/edge", ignore_errors=True)
        (rootfs / "etc/edge").mkdir()
        shutil.rmtree(bundle, ignore_errors=True)
        for p, data in saved.items():
            (rootfs / p).write_bytes(data)
        for k in (rootfs / "etc/ssh").glob("ssh_host_*"):
            k.unlink()


def test_image_layout_without_mounting(image):
    img = image / "edge-lpr-arm64.img"
    digest = hashlib.sha256(img.read_bytes()).hexdigest()
    assert (image / "edge-lpr-arm64.img.sha256").read_text().split()[0] == digest
    table = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "dos" and [p["type"] for p in parts] == ["c", "83"]
    boot_off = parts[0]["start"] * 512
    listing = subprocess.run(["mdir", "-b", "-i", f"{img}@@{boot_off}", "::/"], capture_output=True, text=True, check=True).stdout
    names = {line.rsplit("/", 1)[-1] for line in listing.split()}
    for f in ("config.txt", "cmdline.txt", "vmlinuz", "initrd.img"):
        assert f in names, listing
    assert any(n.endswith(".dtb") for n in names) and any(n.startswith("start") for n in names)
    root = image / "root.part"
    subprocess.run(["dd", f"if={img}", f"of={root}", "bs=512", f"skip={parts[1]['start']}", f"count={parts[1]['size']}",
                    "status=none"], check=True)
    try:
        def debugfs(cmd):
            return subprocess.run(["debugfs", "-R", cmd, str(root)], capture_output=True, text=True).stdout

        assert "edge.service" in debugfs("ls /etc/systemd/system")
        assert "edge" in debugfs("ls /opt/edge/venv/bin")
        assert "ssh_host" not in debugfs("ls /etc/ssh")
        assert ".key" not in debugfs("ls /etc/edge")
    finally:
        root.unlink(missing_ok=True)


def boot_image(img: Path, work: Path, timeout: float = 1200) -> dict:
    """Flash-and-power-on, emulated: copy the image, put a device bundle (from `edge provision`) on
    its FAT partition and a fixture clip in its root filesystem (as the camera), boot it under
    qemu-system-aarch64 -M virt with user networking, and collect what it publishes to a real
    Mosquitto on this machine (TLS, client certificates, the deploy/collector ACL), which the guest
    reaches as 10.0.2.2. Returns the status payloads, the reads, the console log and the times."""
    from .broker import collector_broker
    from .test_provision_acl import Client

    edge = str(ROOT / ".venv/bin/edge")
    ca = work / "ca"
    run = lambda *a: subprocess.run([edge, "provision", *a], check=True, capture_output=True)  # noqa: E731
    run("ca", "--ca-dir", str(ca))
    run("server", "10.0.2.2", "--san", "10.0.2.2", "--san", "127.0.0.1", "--ca-dir", str(ca), "--out", str(work / "server"))
    run("client", "collector", "--ca-dir", str(ca), "--out", str(work / "collector"))
    broker = collector_broker(work / "broker", ca, work / "server")
    run("device", "gate-qemu", "--ca-dir", str(ca), "--out", str(work / "bundle"), "--owner", "Test Agency", "--site", "qemu",
        "--broker", f"10.0.2.2:{broker.port}", "--gps", "fixed:47.07,15.44", "--camera-source", "/opt/edge/clip.mp4")

    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(disk)], check=True)
    parts = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout)
    boot, root = parts["partitiontable"]["partitions"]
    subprocess.run(["mcopy", "-s", "-i", f"{disk}@@{boot['start'] * 512}", str(work / "bundle"), "::/edge-bundle"], check=True)
    fw = work / "fw"
    fw.mkdir()
    for f in ("vmlinuz", "initrd.img"):
        subprocess.run(["mcopy", "-i", f"{disk}@@{boot['start'] * 512}", f"::/{f}", str(fw / f)], check=True)
    part = work / "root.part"
    dd = ["dd", "bs=1M", "iflag=skip_bytes,count_bytes", "status=none", "conv=sparse"]
    subprocess.run([*dd, f"if={disk}", f"of={part}", f"skip={root['start'] * 512}", f"count={root['size'] * 512}"], check=True)
    for cmd in (f"write {BOOT_CLIP} /opt/edge/clip.mp4", "sif /opt/edge/clip.mp4 mode 0100644", "sif /opt/edge/clip.mp4 uid 0",
                "sif /opt/edge/clip.mp4 gid 0"):
        subprocess.run(["debugfs", "-w", "-R", cmd, str(part)], check=True, capture_output=True)
    subprocess.run(["dd", "bs=1M", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none", f"if={part}", f"of={disk}",
                    f"seek={root['start'] * 512}"], check=True)
    part.unlink()

    col = Client(broker.port, work, work / "collector", "collector", "collector-qemu")
    got: dict = {"status": [], "reads": []}
    col.c.on_message = lambda c, u, m: got["status" if m.topic.endswith("/status") else "reads"].append(json.loads(m.payload))
    col.c.subscribe("lpr/v1/+/status", qos=1)
    col.c.subscribe("$share/collectors/lpr/v1/+/reads", qos=1)
    console = work / "console.log"
    t0 = time.monotonic()
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024", "-nographic", "-no-reboot",
         "-kernel", str(fw / "vmlinuz"), "-initrd", str(fw / "initrd.img"),
         "-append", "console=ttyAMA0 root=LABEL=EDGE_ROOT rootfstype=ext4 rootwait systemd.journald.forward_to_console=1",
         "-drive", f"file={disk},format=raw,if=virtio", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="],
        stdin=subprocess.DEVNULL, stdout=open(console, "wb"), stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - t0 < timeout and qemu.poll() is None:
            if "online_s" not in got and any(s.get("state") == "online" for s in got["status"]):
                got["online_s"] = time.monotonic() - t0
            if got["reads"]:
                got["read_s"] = time.monotonic() - t0
                break
            time.sleep(1)
    finally:
        qemu.kill()
        qemu.wait()
        col.close()
        broker.stop()
    got["console"] = console.read_text(errors="replace")
    got["disk"] = disk
    return got


def test_image_boots_provisions_itself_and_publishes_reads(image, tmp_path):
    """The stretch goal of the deploy issue: the image itself, powered on with a bundle, comes up
    reading and publishing with no further touch."""
    if not shutil.which("qemu-system-aarch64"):
        subprocess.run(["bash", str(ROOT / "deploy" / "host-packages.sh"), "qemu-system-arm"], check=True, capture_output=True)
    got = boot_image(image / "edge-lpr-arm64.img", tmp_path)
    log = got["console"]
    print(f"online after {got.get('online_s', -1):.0f} s, first read after {got.get('read_s', -1):.0f} s")
    assert "edge-firstboot: provisioned gate-qemu" in log or "Finished edge-firstboot" in log, log[-3000:]
    assert "FAILED" not in log, [line for line in log.splitlines() if "FAILED" in line]
    assert any(s.get("state") == "online" and s.get("device_id") == "gate-qemu" for s in got["status"]), log[-3000:]
    assert got["reads"], log[-3000:]
    r = got["reads"][0]
    want = json.loads(BOOT_CLIP.with_suffix(".json").read_text())["expected_reads"]
    assert r["plate"]["text"] in want
    assert r["camera"]["owner"] == "Test Agency" and r["device"]["id"] == "gate-qemu" and r["gps"]["source"] == "fixed"
    # the key left the FAT partition
    boot = json.loads(subprocess.run(["sfdisk", "--json", str(got["disk"])], capture_output=True, text=True).stdout)
    off = boot["partitiontable"]["partitions"][0]["start"] * 512
    listing = subprocess.run(["mdir", "-/", "-b", "-i", f"{got['disk']}@@{off}", "::/"], capture_output=True, text=True).stdout
    assert "device.key" not in listing and "edge-bundle" not in listing
