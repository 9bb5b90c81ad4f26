"""bench/common.py: what the bench/ scripts share: the full-width random CPnet (the network with
Cellpose's real sizes and random weights), the bundled model through Cellpose (with the style
padding Cellpose 3.1.1.3 needs for a net narrower than 256 at the bottom), real images tiled to
a given size, peak memory of a child process, and the machine description for report headers.
Python is for benchmarks only; nothing here runs inside gpuseg."""
import os
import platform
import resource
import subprocess
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
BUNDLED_MODEL = os.path.join(ROOT, "models", "nuclei_gpuseg_v2")
# a grey dsb2018 dev image (256x320 fluorescence nuclei), the one bench_net has always used
DSB_IMAGE = os.path.join(DATA, "dsb2018", "dev", "images",
                         "1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png")
# the source of the tiled images: a dense fluorescence field (520x696, 313 nuclei in its labels)
TILE_SOURCE = os.path.join(DATA, "dsb2018", "dev", "images",
                           "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5.png")
FULL_NBASE = [2, 32, 64, 128, 256]


def full_width_net(seed=0):
    """Cellpose 3's CPnet at its real widths with random weights and random batch-norm
    statistics (torch.manual_seed(seed)), in eval mode. Saved with save_model it is a model file
    that stock Cellpose (CLI included) and gpuseg both load."""
    import torch
    from cellpose import resnet_torch

    torch.manual_seed(seed)
    net = resnet_torch.CPnet(FULL_NBASE, 3, sz=3, mkldnn=False)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.empty(n).uniform_(0.5, 1.5, generator=g)
            m.bias.data = torch.empty(n).normal_(0, 0.2, generator=g)
            m.running_mean.data = torch.empty(n).normal_(0, 0.3, generator=g)
            m.running_var.data = torch.empty(n).uniform_(0.5, 2.0, generator=g)
    net.eval()
    return net


def save_full_width_model(path, seed=0):
    full_width_net(seed).save_model(path)
    return path


def nbase_of(path):
    """A Cellpose model file's channel widths [nchan, ...], read from its state dict."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    nb = [sd["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[1]]
    k = 0
    while f"downsample.down.res_down_{k}.conv.conv_0.2.weight" in sd:
        nb.append(sd[f"downsample.down.res_down_{k}.conv.conv_0.2.weight"].shape[0])
        k += 1
    return nb


def bundled_cellpose_model(path=BUNDLED_MODEL):
    """CellposeModel (CPU) running a narrow model file such as models/nuclei_gpuseg_v2: the net
    is swapped for one with the file's widths whose style output is zero-padded to 256 values
    (Cellpose 3.1.1.3's run_net allocates (n, 256) styles); nothing else changes."""
    import torch
    from cellpose import models, resnet_torch

    nb = nbase_of(path)

    class StylePadCPnet(resnet_torch.CPnet):
        def forward(self, data):
            out = super().forward(data)
            style = out[1]
            if style.shape[1] < 256:
                style = torch.nn.functional.pad(style, (0, 256 - style.shape[1]))
            return (out[0], style) + tuple(out[2:])

    m = models.CellposeModel(gpu=False, pretrained_model=False)
    net = StylePadCPnet(nb, nout=3, sz=3, mkldnn=False, max_pool=True)
    net.load_model(path, device=torch.device("cpu"))
    net.eval()
    m.net = net
    m.nbase = nb
    m.pretrained_model = path
    m.diam_mean = float(net.diam_mean.data.cpu().numpy()[0])
    m.diam_labels = float(net.diam_labels.data.cpu().numpy()[0])
    return m


def tiled_image(side, source=TILE_SOURCE):
    """A side x side uint8 grey image made by tiling a real image (mirrored every other tile so
    that edges meet smoothly); deterministic."""
    import cv2

    img = cv2.imread(source, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2).astype(np.uint8)
    h, w = img.shape
    block = np.block([[img, img[:, ::-1]], [img[::-1], img[::-1, ::-1]]])
    reps = (-(-side // (2 * h)), -(-side // (2 * w)))
    return np.ascontiguousarray(np.tile(block, reps)[:side, :side])


def mirror_tiled_3d(x, Z, S):
    """A Z x Y x X stack mirrored along every axis and tiled to Z x S x S (deterministic)."""
    b = np.concatenate([x, x[::-1]], 0)
    b = np.concatenate([b, b[:, ::-1]], 1)
    b = np.concatenate([b, b[:, :, ::-1]], 2)
    reps = (-(-Z // b.shape[0]), -(-S // b.shape[1]), -(-S // b.shape[2]))
    return np.ascontiguousarray(np.tile(b, reps)[:Z, :S, :S])


def ap50(truth, pred):
    """Cellpose's average precision at IoU 0.5 of pred against truth (label arrays, any dims)."""
    from cellpose import metrics

    return float(metrics.average_precision([truth.astype(np.int32)], [pred.astype(np.int32)],
                                           threshold=[0.5])[0][0][0])


def write_tiled(side, folder, source=TILE_SOURCE):
    import tifffile

    path = os.path.join(folder, f"tiled_{side}.tif")
    if not os.path.exists(path):
        tifffile.imwrite(path, tiled_image(side, source))
    return path


GNU_TIME = "/usr/bin/time"


def run_peak(cmd, env=None, timeout=3600):
    """Runs cmd and returns (wall, peak_mib, returncode, stdout, stderr). The peak RSS comes from
    GNU time (-f %M) when /usr/bin/time exists, else from os.wait4's ru_maxrss. Why not wait4
    alone: Linux carries the RSS high-water mark across exec, and Python starts children with
    vfork, so a child's ru_maxrss is at least this (torch-loaded) process's RSS; GNU time is a
    small process of its own. stdout/stderr go through temporary files."""
    import tempfile

    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as ft:
        full = [GNU_TIME, "-f", "%M", "-o", ft.name] + list(cmd) if use_time else cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=fo, stderr=fe, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError(f"{cmd[0]} timed out after {timeout} s")
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        peak = ru.ru_maxrss / 1024.0
        if use_time:
            lines = [ln for ln in open(ft.name).read().split("\n") if ln.strip().isdigit()]
            peak = int(lines[-1]) / 1024.0 if lines else None  # %M is in KiB
        return wall, peak, p.returncode, fo.read(), fe.read()


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions():
    from importlib.metadata import version

    out = {}
    for pkg in ("cellpose", "torch", "numpy", "opencv-python-headless", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            out[pkg] = None
    out["python"] = platform.python_version()
    return out


def git_describe():
    r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty", "--tags"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None


def max_rss_self_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
