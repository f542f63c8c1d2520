"""The `edge` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


def _pipeline_section(args, base=None):
    """The `[pipeline]` section the command line describes: the config's (base), with the flags given
    on top (--models, --threads, --int8, --refine, --region, --min-confidence)."""
    from pydantic import ValidationError

    from edge.config import PipelineSection

    data = base.model_dump(exclude_unset=True) if base is not None else {}
    for flag, key in (("models", "model_dir"), ("threads", "threads"), ("int8", "int8"), ("refine", "refine"),
                      ("region", "regions"), ("min_confidence", "min_confidence"), ("motion_gate", "motion_gate")):
        v = getattr(args, flag, None)
        if v is not None:
            data[key] = v
    try:
        return PipelineSection.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        flag = {"model_dir": "models", "regions": "region"}.get(str(err["loc"][0]), str(err["loc"][0]))
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"--{flag.replace('_', '-')}: {msg[:1].lower() + msg[1:]}, got {err['input']!r}") from None


def _stage(args, still: bool = False):
    """still: images read one at a time (edge eval), whose reads are final (assembly.STILL_MIN_CONFIDENCE)."""
    from edge.runtime.assembly import build_stage

    return build_stage(_pipeline_section(args), still=still)


def cmd_eval(args) -> int:
    from edge.evaluate import run_crops_eval, run_eval

    if args.crops:
        from edge.runtime.assembly import build_reader

        run_crops_eval(Path(args.crops), build_reader(_pipeline_section(args)), Path(args.out) if args.out else None,
                       region_from_state=args.region_from_folder)
        return 0
    if not args.dir:
        raise UserError("eval needs a folder (DIR) or --crops DIR")
    if not args.out:
        raise UserError("eval needs --out PRED.jsonl")
    run_eval(Path(args.dir), Path(args.out), _stage(args, still=True), region_from_folder=args.region_from_folder)
    return 0


def cmd_read(args) -> int:
    """Plates of still images (OpenALPR's `alpr IMAGE`): one line per plate, or JSON lines."""
    import json

    from edge.api import ImageError, as_bgr

    stage = _stage(args, still=True)
    if args.draw and len(args.images) != 1:
        raise UserError("--draw writes one picture: give one image")
    code = 0
    for path in args.images:
        try:
            img = as_bgr(path)
        except ImageError as e:
            print(f"edge read: error: {e}", file=sys.stderr)
            code = 2
            continue
        plates = stage.recognize(img)
        if args.json:
            print(json.dumps({"image": path, "plates": [
                {"text": p.text, "confidence": p.confidence, "box": list(p.box), "region": p.region,
                 "char_confidences": list(p.char_confidences), "detection_score": p.detection_score} for p in plates]}))
        else:
            for p in plates:
                box = ",".join(f"{v:.0f}" for v in p.box)
                print(f"{path}  {p.text:<10} conf {p.confidence:.2f}  box {box}  region {p.region or '-'}")
            if not plates:
                print(f"{path}  no plate read")
        if args.draw:
            _draw(img, plates, Path(args.draw))
    return code


def _draw(img, plates, out: Path) -> None:
    import cv2

    canvas = img.copy()
    for p in plates:
        x1, y1, x2, y2 = (int(round(v)) for v in p.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 220, 0), 2)
        cv2.putText(canvas, f"{p.text} {p.confidence:.2f}", (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 220, 0), 2)
    if not cv2.imwrite(str(out), canvas):
        raise UserError(f"--draw: cannot write {out} (use a .jpg or .png name in a folder that exists)")
    print(f"drawn: {out}", file=sys.stderr)


def _setup_logging(args) -> None:
    import datetime as dt
    import json
    import logging

    from edge.record import iso_utc

    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    if getattr(args, "log_json", False):

        class JsonFormatter(logging.Formatter):
            def format(self, r):
                # ISO 8601 in UTC, as every other time the device writes
                t = iso_utc(dt.datetime.fromtimestamp(r.created, dt.UTC))
                return json.dumps({"time": t, "level": r.levelname, "logger": r.name, "msg": r.getMessage()})

        h = logging.StreamHandler()
        h.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[h])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_config_check(args) -> int:
    from edge.config import ConfigError, load_config

    context: dict = {"offline": args.offline}
    try:
        cfg = load_config(args.file, context=context)
    except ConfigError as e:
        for p in e.problems:
            print(f"{e.source}: {p}", file=sys.stderr)
        return 2
    if not args.offline and cfg.camera.source == "picamera2":
        import importlib.util

        if importlib.util.find_spec("picamera2") is None:
            print(f"{args.file}: camera.source: picamera2 is not installed here: it comes with the Raspberry Pi OS image "
                  "(deploy/pi-gen); on the Debian image use /dev/videoN or an rtsp:// URL", file=sys.stderr)
            return 2
    for line in context.get("unchecked", []):
        print(f"{args.file}: {line}")
    print(f"{args.file}: ok" + (" (offline)" if args.offline else ""))
    return 0


def _load(args):
    from edge.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        raise UserError(f"{e.source}: " + "; ".join(e.problems)) from None


def _replay_config(args):
    """A config for replays: the --config file, else defaults for a developer's machine."""
    from edge.config import Config

    if args.config:
        cfg = _load(args)
    else:
        cfg = Config.model_validate({
            "device": {"id": "replay", "state_dir": "out/replay"},
            "camera": {"id": "replay", "owner": "developer (replay)", "source": args.video},
        })
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--mqtt expects HOST:PORT, got {args.mqtt!r}")
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"host": host, "port": int(port)})})
    if args.outbox:
        cfg = cfg.model_copy(update={"outbox": cfg.outbox.model_copy(update={"path": Path(args.outbox)})})
    return cfg


def cmd_run(args) -> int:
    from edge.runtime.runner import RunError, Runner, RunOptions

    _setup_logging(args)
    cfg = _load(args)
    try:
        return Runner(cfg, RunOptions(print_reads=args.print_reads, json_out=args.json)).run()
    except RunError as e:
        print(f"edge run: error: {e}", file=sys.stderr)
        return e.code


def cmd_replay(args) -> int:
    from edge.runtime.runner import RunError, Runner, RunOptions

    _setup_logging(args)
    cfg = _replay_config(args)
    publish = not args.no_mqtt and bool(args.config or args.mqtt)
    opts = RunOptions(source=args.video, pace=not args.fast, loop=args.loop, publish=publish, replay=True,
                      restart=args.restart, flush_timeout_s=args.flush_timeout, json_out=args.json)
    try:
        return Runner(cfg, opts).run()
    except RunError as e:
        print(f"edge replay: error: {e}", file=sys.stderr)
        return e.code


def cmd_bench(args) -> int:
    from edge.bench import run_bench
    from edge.capture.sources import VideoFileSource
    from edge.config import Config

    VideoFileSource(args.video, pace=False).close()  # a bad video: CaptureError, exit 3 as for replay
    if args.config:
        cfg = _load(args)
    else:
        cfg = Config.model_validate({"device": {"id": "bench", "state_dir": "out/bench"},
                                     "camera": {"id": "bench", "owner": "developer (bench)", "source": args.video}})
    cfg = cfg.model_copy(update={"pipeline": _pipeline_section(args, cfg.pipeline)})
    if args.preview:
        from edge.bench import run_preview_bench

        run_preview_bench(Path(args.video), cfg, max_frames=args.frames, repeats=args.repeats)
        return 0
    run_bench(Path(args.video), cfg, max_frames=args.frames, repeats=args.repeats)
    return 0


def cmd_subscribe(args) -> int:
    """Print reads arriving over MQTT (the collector's view, for demos and checks)."""
    import json
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.record import Read
    from edge.runtime.runner import format_read

    host, _, port = args.mqtt.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--mqtt expects HOST:PORT, got {args.mqtt!r}")
    seen: set[str] = set()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311, clean_session=False)

    def on_message(client, userdata, msg):
        try:
            r = Read.from_json(msg.payload)
        except ValueError as e:
            print(f"rejected message on {msg.topic}: {str(e).splitlines()[0]}", flush=True)
            return
        if r.read_id in seen:
            return
        seen.add(r.read_id)
        crop = ""
        if args.save_crops and r.images.plate_jpeg:
            import base64

            path = Path(args.save_crops) / f"{r.plate.text}-{r.read_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(r.images.plate_jpeg))
            crop = f"  crop {path}"
        if args.json:
            d = json.loads(r.to_json())
            d.get("images", {}).pop("plate_jpeg", None)
            print(json.dumps(d), flush=True)
        else:
            print(f"[mqtt {msg.topic}] {format_read(r)}{crop}", flush=True)

    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(args.topic, qos=1)
    try:
        c.connect(host, int(port))
    except OSError as e:
        print(f"edge subscribe: error: cannot reach broker {args.mqtt}: {e.strerror or e}", file=sys.stderr)
        return 4
    c.loop_start()
    end = time.monotonic() + args.timeout if args.timeout else None
    try:
        while (end is None or time.monotonic() < end) and (not args.count or len(seen) < args.count):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    c.disconnect()
    c.loop_stop()
    return 0


def cmd_provision(args) -> int:
    from edge.provision import (
        DeviceSpec,
        ProvisionError,
        init_ca,
        issue_cert,
        issue_collector_cert,
        issue_integration_cert,
        make_bundle,
        revoke,
    )

    ca = Path(args.ca_dir)
    try:
        if args.what == "ca":
            print(f"CA certificate: {init_ca(ca)} (keep ca.key offline; hotlist-signing.key goes to the collector: "
                  "edge collect --hotlist-key)")
        elif args.what == "server":
            # the broker's own name is always one of its names; --san adds more
            names = list(dict.fromkeys([args.name, *(args.san or [])]))
            key, crt = issue_cert(ca, Path(args.out), "server", args.name, server_names=names)
            print(f"broker certificate: {crt}, key: {key}")
        elif args.what == "client":
            key, crt = issue_collector_cert(ca, Path(args.out), args.name)
            print(f"collector certificate for {args.name!r} (from the collectors' CA): {crt}, key: {key}")
        elif args.what == "integration":
            key, crt = issue_integration_cert(ca, Path(args.out), args.name)
            print(f"certificate for {args.name!r} (devices' listener, read rights in edge.acl): {crt}, key: {key}")
        elif args.what == "revoke":
            crl, n = revoke(ca, args.name)
            print(f"{args.name}: revoked; {crl} now lists {n} certificate(s): copy it to the broker "
                  "(/etc/mosquitto/edge/devices.crl) and restart it")
        else:
            if args.camera_source == "picamera2" and args.image == "debian":
                raise UserError("--camera-source picamera2 needs --image raspios: the Debian image has no picamera2 "
                                "(use /dev/videoN or rtsp://... there)")
            host, _, port = (args.broker or "localhost:8883").rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"--broker expects HOST:PORT, got {args.broker!r}")
            spec = DeviceSpec(device_id=args.name, owner=args.owner or "", site=args.site or "", camera_id=args.camera_id or "",
                              camera_source=args.camera_source or ("picamera2" if args.image == "raspios" else "/dev/video0"), mounting=args.mounting, broker_host=host, broker_port=int(port),
                              gps=args.gps, password=args.password)
            out = make_bundle(ca, Path(args.out), spec)
            print(f"device bundle for {args.name}: {out} (copy its files onto the boot partition, folder edge-bundle/)")
            if args.password:
                print(f"add {out / 'broker-passwd.line'} to the broker's password file")
    except ProvisionError as e:
        raise UserError(str(e)) from None
    return 0


INT8_CHOICES = ("none", "reader", "detector", "both")  # edge.vision.model_files.INT8_CHOICES (not imported: keeps --help light)


def build_parser() -> argparse.ArgumentParser:
    from edge import __version__

    p = argparse.ArgumentParser(prog="edge", description="Edge licence-plate reader")
    p.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("eval", help="score the detector+reader on a labelled folder")
    e.add_argument("dir", nargs="?", help="folder in the openalpr-endtoend layout (DIR/<region>/<image> + .txt)")
    e.add_argument("--out", help="write one JSON line per image here")
    e.add_argument("--crops", help="score the reader alone on a folder with groundtruth.csv")
    e.add_argument("--threads", type=int, default=None, help="inference threads (default 1)")
    e.add_argument("--models", help="folder holding the ONNX models (default: the shipped models/)")
    e.add_argument("--min-confidence", type=float, default=None,
                   help="drop reads below this confidence (default 0.7: a still image's read is final)")
    e.add_argument("--int8", choices=INT8_CHOICES, default=None,
                   help="use the int8-quantized reader, detector or both (the files beside the float32 ones; default: none)")
    e.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="move each detector box onto the plate's edges before reading it, when the model folder has "
                        "plate_refiner.onnx (default: on; --no-refine reads the detector's boxes)")
    e.add_argument("--region", action="append",
                   help="read with a region's plate conventions (br, uk: formats; eu: European national formats; us: O and 0 are one glyph); repeatable")
    e.add_argument("--region-from-folder", action=argparse.BooleanOptionalAction, default=True,
                   help="read each sub-folder named after a known region (br, eu, uk, us), and with --crops each crop whose "
                        "state column names a US state (or a known region), with that region's conventions, as OpenALPR is run with -c per "
                        "country (default: on; --no-region-from-folder reads region-blind)")
    e.set_defaults(func=cmd_eval)

    rd = sub.add_parser("read", help="read the plates of still images (like OpenALPR's alpr IMAGE)")
    rd.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, BMP or WebP files")
    rd.add_argument("--json", action="store_true", help="one JSON line per image: text, confidence, box, region")
    rd.add_argument("--draw", metavar="OUT", help="also write the image with the plates drawn on it (one image only)")
    rd.add_argument("--region", action="append", help="read with a region's plate conventions (br, eu, uk, us); repeatable")
    rd.add_argument("--models", help="folder holding the ONNX models (default: the shipped ones)")
    rd.add_argument("--threads", type=int, default=None, help="inference threads (default 1)")
    rd.add_argument("--int8", choices=INT8_CHOICES, default=None, help="use the int8-quantized reader, detector or both")
    rd.add_argument("--min-confidence", type=float, default=None, help="drop reads below this confidence (default 0.7)")
    rd.set_defaults(func=cmd_read)

    r = sub.add_parser("run", help="run the device service (camera -> MQTT)")
    r.add_argument("--config", required=True, help="device TOML file")
    r.add_argument("--print-reads", action="store_true", help="also print each read on stdout")
    r.add_argument("--json", action="store_true", help="print reads as JSON (without images)")
    r.add_argument("--log-json", action="store_true", help="structured (JSON) log lines")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="play a video file through the whole pipeline")
    rp.add_argument("video")
    rp.add_argument("--config", help="device TOML file (default: developer defaults, no MQTT)")
    rp.add_argument("--mqtt", help="publish to this broker, HOST:PORT")
    rp.add_argument("--no-mqtt", action="store_true", help="do not publish, even if the config has a broker")
    rp.add_argument("--outbox", help="outbox SQLite file (default: <state_dir>/outbox.db)")
    rp.add_argument("--fast", action="store_true", help="as fast as possible instead of the recorded frame rate")
    rp.add_argument("--loop", action="store_true", help="start again at the end")
    rp.add_argument("--restart", action="store_true", help="ignore where an interrupted replay of this file got to")
    rp.add_argument("--flush-timeout", type=float, default=10.0, help="seconds to wait for the broker at the end")
    rp.add_argument("--json", action="store_true", help="print reads as JSON (without images)")
    rp.add_argument("--log-json", action="store_true")
    rp.add_argument("-v", "--verbose", action="store_true")
    rp.set_defaults(func=cmd_replay)

    b = sub.add_parser("bench", help="frames per second of the whole pipeline vs decode only")
    b.add_argument("video")
    b.add_argument("--config", help="device TOML file: bench the pipeline `edge run --config FILE` runs (default: a device's defaults)")
    b.add_argument("--threads", type=int, default=None, help="inference threads (default: the config's, 1)")
    b.add_argument("--preview", action="store_true", help="the preview's cost: off, on with no viewer, on with one viewer")
    b.add_argument("--frames", type=int, default=300, help="frames per repeat (default 300)")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--motion-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="motion gating (default: the config's, on; --no-motion-gate infers every frame)")
    b.add_argument("--int8", choices=INT8_CHOICES, default=None, help="use the int8-quantized reader, detector or both")
    b.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None, help="refine boxes before reading (default: on)")
    b.add_argument("--region", action="append", help="read with a region's plate conventions (repeatable; default: the config's)")
    b.add_argument("--models", help="folder holding the ONNX models (default: the config's, the shipped models/)")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    cc = csub.add_parser("check", help="validate a device TOML file, printing every problem with its key")
    cc.add_argument("file")
    cc.add_argument("--offline", action="store_true",
                    help="check a file away from its device (a workstation, a fresh bundle): the TLS files it names are not looked for")
    cc.set_defaults(func=cmd_config_check)

    s = sub.add_parser("subscribe", help="print reads arriving over MQTT")
    s.add_argument("--mqtt", required=True, help="broker HOST:PORT")
    s.add_argument("--topic", default="lpr/v1/+/reads")
    s.add_argument("--client-id", default="edge-subscribe")
    s.add_argument("--count", type=int, default=0, help="exit after this many distinct reads")
    s.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    s.add_argument("--json", action="store_true")
    s.add_argument("--save-crops", metavar="DIR", help="save each read's plate crop here (TEXT-READ_ID.jpg)")
    s.set_defaults(func=cmd_subscribe)

    pv = sub.add_parser("provision", help="deployment CA, device bundles, broker and collector certificates")
    pv.add_argument("what", choices=["ca", "device", "server", "client", "integration", "revoke"])
    pv.add_argument("name", nargs="?", default="", help="device id (device, revoke), broker host name (server), collector "
                                                         "name (client: collector, collector-2, ...), integration (homeassistant)")
    pv.add_argument("--ca-dir", required=True, help="the deployment CA folder (ca.key stays here)")
    pv.add_argument("--out", default="edge-bundle", help="output folder")
    pv.add_argument("--owner", help="device: who owns the camera")
    pv.add_argument("--site")
    pv.add_argument("--camera-id")
    pv.add_argument("--image", choices=["debian", "raspios"], default="debian",
                    help="device: the image the bundle is for: debian (deploy/image; USB/V4L2 or RTSP cameras) or raspios "
                         "(deploy/pi-gen; the CSI camera through picamera2); it sets the default --camera-source")
    pv.add_argument("--camera-source", default=None,
                    help="device: picamera2 | /dev/videoN | rtsp://... | a video file (default: /dev/video0 for --image debian, "
                         "picamera2 for --image raspios)")
    pv.add_argument("--mounting", default="fixed", choices=["fixed", "vehicle"])
    pv.add_argument("--broker", help="device: broker HOST:PORT (default localhost:8883)")
    pv.add_argument("--gps", default="none", help="none | gpsd | fixed:LAT,LON | nmea:/dev/ttyUSB0")
    pv.add_argument("--password", action="store_true", help="device: a generated password instead of a client certificate")
    pv.add_argument("--san", action="append", help="server: extra DNS names or IPs (repeatable)")
    pv.set_defaults(func=cmd_provision)

    from edge.collector.cli import register

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if not {"-v", "--verbose"} & set(sys.argv[1:] if argv is None else argv):
        # OpenCV's and FFmpeg's own lines ("[tcp @ 0x...] Connection refused", "[ WARN:0@0.2] global
        # cap.cpp") would come before the one line that says what is wrong; -v keeps them. Set
        # before anything imports cv2, which reads them once.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from edge.capture.base import CaptureError
    from edge.collector.cli import CollectorUserError
    from edge.evaluate import EvalError
    from edge.vision.session import ModelError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, EvalError, CollectorUserError) as e:
        print(f"edge {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except CaptureError as e:
        print(f"edge {args.cmd}: error: {e}", file=sys.stderr)
        return 3
    except ModelError as e:
        print(f"edge {args.cmd}: error: {e}", file=sys.stderr)
        return 5
    except Exception as e:  # an unexpected failure still gets one line (details with -v/--verbose in the log)
        if getattr(args, "verbose", False):
            raise
        print(f"edge {args.cmd}: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 5
    except KeyboardInterrupt:
        print(f"edge {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
