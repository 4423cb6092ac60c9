"""``lumbarseg serve``: its arguments, the checks made before anything starts, and the start itself.

Safe by default: the server listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise, and
then warns that it has no login of its own - it belongs behind a reverse proxy that does the login.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from ..errors import InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 512
# One environment has everything (tools/install.sh installs the test extras, which include the web app); a
# plain `pip install -e .` leaves trame-slicer out, so name both ways in.
WEB_INSTALL_HINT = ("run 'bash tools/install.sh' in the LumbarSeg folder (or pip install -e '.[web]' into this "
                    "environment), then start it with '.venv/bin/lumbarseg serve'")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def no_login_warning(host: str, port: int) -> str:
    return (f"lumbarseg: WARNING: serving on {host}:{port}, reachable from other machines, and this server has NO "
            "login: anyone who can reach it can open, segment and download CTs. Put it behind a reverse proxy "
            "that does the login (README 'In the browser'), or serve on 127.0.0.1.")


def register_cli(sub) -> None:
    p = sub.add_parser("serve", help="LumbarSeg in a web browser (trame-slicer)",
                       description="Serve the LumbarSeg flow (open a CT, segment, look, edit, export) to a web "
                       "browser. Needs the web app's packages (trame-slicer): " + WEB_INSTALL_HINT + ".")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; anything else is "
                   "reachable from the network and has no login)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--sample", action="store_true", help="open the bundled sample CT at start")
    p.add_argument("--data-dir", metavar="DIR",
                   help="a server-side folder whose CT files and DICOM series folders the page offers to open")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest CT a browser may upload, in MB (default {DEFAULT_MAX_UPLOAD_MB}; 0 disables uploads)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where uploads and engine results are kept while the server runs (default: a new "
                   "temporary folder, removed at exit; in a folder given here the uploads and exports are "
                   "removed at exit unless --keep-uploads)")
    p.add_argument("--keep-uploads", action="store_true",
                   help="keep the uploaded CTs in --work-dir/uploads after the server exits (they are patient "
                   "data: by default they are removed at exit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the engine runs (default auto: CUDA when present)")
    p.add_argument("--model", default=None, metavar="NAME|PATH", help="a shipped model (cpu, paper) or a model file")
    p.set_defaults(func=cmd_serve)


def check_serve_arguments(args: argparse.Namespace) -> None:
    """Every argument problem as one :class:`InputError`, before the (slow) server start."""
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port; use 1-65535 (e.g. {DEFAULT_PORT}).")
    if args.max_upload_mb < 0:
        raise InputError(f"--max-upload-mb {args.max_upload_mb:g} is negative; use 0 (no uploads) or a size in MB.")
    if args.data_dir is not None:
        folder = Path(args.data_dir)
        if not folder.is_dir():
            raise InputError(f"--data-dir {args.data_dir}: no such folder; give a folder holding CT files or "
                             "DICOM series folders.")
    if args.work_dir is not None and Path(args.work_dir).exists() and not Path(args.work_dir).is_dir():
        raise InputError(f"--work-dir {args.work_dir} is a file; give a folder (it is created when missing).")
    if getattr(args, "keep_uploads", False) and args.work_dir is None:
        raise InputError("--keep-uploads keeps uploads in --work-dir; without --work-dir they are in a temporary "
                         "folder removed at exit. Give --work-dir DIR too.")


def cmd_serve(args: argparse.Namespace) -> int:
    check_serve_arguments(args)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        # Headless server: VTK draws the views offscreen with EGL (Mesa or the GPU's driver), not through X.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        import trame_slicer  # noqa: F401
    except ModuleNotFoundError:
        raise InputError("lumbarseg serve needs the web app's packages (trame-slicer), which this Python does not "
                         f"have ({sys.prefix}): {WEB_INSTALL_HINT}.") from None
    if not is_loopback(args.host):
        print(no_login_warning(args.host, args.port), file=sys.stderr, flush=True)
    from .app import serve

    return serve(args)
