"""Input pipeline cost per CPU core: PIL + float32 transforms against uint8 torchvision.io decode.

What one DataLoader worker (one core) does per ImageNet training image, on generated
ImageNet-sized JPEGs (500x375, quality 90, photo-like smooth noise):

- `pil`: the project's current path (lib/data.py): PIL decode, RandomResizedCrop,
  RandomHorizontalFlip, ToTensor, Normalize, all in the worker, float32 out (602 KB per image
  at 224 px).
- `uint8`: read the bytes, `torchvision.io.decode_jpeg` to uint8, the same crop and flip on the
  uint8 tensor (transforms.v2), uint8 out (150 KB per image); normalisation would run on the
  device, and on a GPU the decode too (`decode_jpeg(device="cuda")`), leaving the worker
  only the file read.
- `bytes`: that file read alone (the worker's share when decoding runs on the GPU).

Both run in this process on one thread, interleaved image by image, so load on the machine
hits both alike; the figure is images per second per core (median of rounds) and how many
cores each needs to feed a target throughput.

    python benchmarks/bench_input.py            # 64 images x 5 rounds
    python benchmarks/bench_input.py --quick    # 8 images x 2 rounds
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import io as tvio
from torchvision import transforms
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGETS = (1000, 3000)  # img/s: a fast GPU on ResNet-50 needs ~3,000


def make_jpegs(folder: Path, count: int) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        coarse = torch.rand(3, 24, 32, generator=generator)
        image = torch.nn.functional.interpolate(coarse[None], size=(375, 500), mode="bicubic")
        image = image[0] + 0.05 * torch.randn(3, 375, 500, generator=generator)
        pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        path = folder / f"{i:04d}.JPEG"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke version")
    args = parser.parse_args(argv)
    count, rounds = (8, 2) if args.quick else (64, 5)
    torch.set_num_threads(1)  # one worker = one core
    pil_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    uint8_tf = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])

    def pil(path: Path) -> torch.Tensor:
        with open(path, "rb") as f:
            return pil_tf(Image.open(f).convert("RGB"))

    def uint8(path: Path) -> torch.Tensor:
        return uint8_tf(tvio.decode_jpeg(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB))

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), count)
        pipelines = (("pil", pil), ("uint8", uint8), ("bytes", lambda p: tvio.read_file(str(p))))
        seconds = {name: [] for name, _ in pipelines}
        for _ in range(rounds):
            spent = dict.fromkeys(seconds, 0.0)
            for path in paths:
                for name, fn in pipelines:
                    torch.manual_seed(0)
                    start = time.perf_counter()
                    out = fn(path)
                    spent[name] += time.perf_counter() - start
                    assert name == "bytes" or out.shape == (3, 224, 224)
            for name in spent:
                seconds[name].append(spent[name])
    print(
        f"Input pipeline per core: {count} generated 500x375 JPEGs, {rounds} rounds, one thread, "
        "decode + RandomResizedCrop(224) + flip (+ ToTensor/Normalize for pil)"
    )
    rates = {name: count / statistics.median(values) for name, values in seconds.items()}
    for name, rate in rates.items():
        spread = [count / s for s in seconds[name]]
        cores = ", ".join(f"{math.ceil(t / rate)} cores for {t:,} img/s" for t in TARGETS)
        print(
            f"  {name:6s} {rate:7.1f} img/s per core (rounds {min(spread):.1f}-{max(spread):.1f})"
            f"; {cores}"
        )
    print(f"  uint8 / pil: {rates['uint8'] / rates['pil']:.2f}x")


if __name__ == "__main__":
    main()
